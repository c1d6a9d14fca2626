"""The pipeline's `baseline` stage: SASRec on the data stage's split, its validation curve, test
metrics over every user and `predictions_test.npz` in the evaluation stage's format."""
from __future__ import annotations

import os
import time

import numpy as np

from rqsid_jax import workdir as wd
from rqsid_jax.baseline import sasrec
from rqsid_jax.retrieval import curves, evaluate
from rqsid_jax.retrieval.metrics import KS


def run(ctx) -> dict:
    """Trains (resuming from <dir>/checkpoints) and evaluates SASRec; returns its metrics."""
    c = ctx.config.baseline
    d = ctx.dir("baseline")
    log_path = os.path.join(d, wd.TRAIN_LOG)
    t = time.time()
    graphdef, params, _ = sasrec.train(c, ctx.split, len(ctx.items), ctx.checkpoints("baseline"),
                                       ctx.mesh, log=(lambda m: curves.append(log_path, m)) if ctx.is_main else None)
    train_s = time.time() - t
    train, history = curves.read(log_path)
    out = {"model": "SASRec", "loss": c.loss, "train_seconds_this_run": train_s,
           "epochs": history[-1]["epoch"] if history else 0.0,
           "best": max(history, key=lambda h: h["val_ndcg@10"]) if history else {}}
    k = max(KS)
    for which in ("validation", "test"):
        m, pred = sasrec.evaluate(graphdef, params, ctx.split, which, c.max_len, k)
        out[which] = m
        if which == "test":
            evaluate.save_test_predictions(os.path.join(d, wd.PREDICTIONS), ctx.split, ctx.items.ids,
                                           pred, np.asarray(ctx.split.test_target))
    if ctx.is_main:
        curves.finish(d, f"SASRec on {ctx.config.dataset}", "training loss (per position)")
    return out
