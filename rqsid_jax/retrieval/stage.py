"""The retriever and evaluation stages: train the generative retriever on a SID set with its
validation curve, then score the best checkpoint on the test split (overall, head/tail, the
paper's probes) and save the predictions file every model shares."""
from __future__ import annotations

import os

import numpy as np

from rqsid_jax import checkpointing
from rqsid_jax import workdir as wd
from rqsid_jax.errors import ConfigError
from rqsid_jax.retrieval import curves, evaluate, precision
from rqsid_jax.retrieval.input_pipeline import eval_examples
from rqsid_jax.retrieval.metrics import KS, recall_ndcg
from rqsid_jax.retrieval.train import build_retriever, train_retriever
from rqsid_jax.sid.stage import load_sid_set


def _scalar_logger(ctx, stage: str, log_path: str):
    """Logs every scalar of a record to TensorBoard and the record to the stage's log.jsonl."""
    writer = ctx.tb_writer(stage)

    def log(m):
        if writer is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(f"{stage}/{k}", v, m["step"])
            writer.flush()
        if ctx.is_main:
            curves.append(log_path, m)
    return log


def stage_retriever(ctx) -> dict:
    """Trains the generative retriever on the chosen SID set, with its validation curve."""
    rc = ctx.config.retriever
    d = ctx.dir("retriever")
    train_retriever(rc, load_sid_set(ctx), ctx.split, ctx.checkpoints("retriever"), ctx.mesh,
                    log=_scalar_logger(ctx, "retriever", os.path.join(d, wd.TRAIN_LOG)), progress=ctx.progress)
    train, history = curves.read(os.path.join(d, wd.TRAIN_LOG))
    if ctx.is_main:
        curves.finish(d, f"retriever on {ctx.config.dataset} (SIDs: {rc.sids})")
    return {"dtype": precision.resolve(rc.dtype), "encoder_input": rc.encoder_input,  # as trained here
            "evaluations": len(history), "last_step": max((r["step"] for r in train + history), default=None),
            "best": max(history, key=lambda h: h.get("val_ndcg@10", -1)) if history else {}}


def stage_evaluation(ctx) -> dict:
    """Test metrics of the best retriever checkpoint, head/tail, probes, predictions file."""
    c = ctx.config.evaluation
    rc = ctx.config.retriever
    r, params = build_retriever(rc, load_sid_set(ctx), rc.seed)
    params, step = checkpointing.restore(
        checkpointing.manager(os.path.join(ctx.checkpoints("retriever"), "best"), max_to_keep=1), params)
    if step is None:
        raise ConfigError(f"{ctx.dir('retriever')}: no best retriever checkpoint")
    codes = wd.load_codes(ctx.dir("sids"))
    head = wd.load_head_tokens(ctx.dir("hourglass"))
    out = {"checkpoint_step": int(step)}
    for which in c.splits:
        ex = eval_examples(ctx.split, r.vocab, which, rc.max_history)
        res = evaluate.evaluate(r, params, ex, c.beam, head_tokens=head, layer2_codes=codes[:, 1],
                                batch_size=c.batch_size, progress=ctx.progress)
        out[which] = {"all": res["metrics"], "head": res["head"], "tail": res["tail"]}
        if which == "test":
            evaluate.save_test_predictions(os.path.join(ctx.dir("evaluation"), wd.PREDICTIONS), ctx.split,
                                           ctx.items.ids, res["predictions"], ex.target)
            if c.given_layer1_users:  # the first users of the test split, a fixed subset
                sub = ex.subset(np.arange(min(c.given_layer1_users, len(ex))))
                g = evaluate.evaluate(r, params, sub, c.beam, given_first=True, batch_size=c.batch_size,
                                      progress=ctx.progress)
                base = recall_ndcg(res["predictions"][: len(sub)], sub.target, [k for k in KS if k <= c.beam])
                out["test_given_layer1"] = {"given_layer1": g["metrics"], "same_users_baseline": base}
            if c.invalid_users:
                sub = ex.subset(np.arange(min(c.invalid_users, len(ex))))
                out["test_unconstrained_invalid"] = evaluate.invalid_ratio(r, params, sub, c.beam,
                                                                           batch_size=c.batch_size,
                                                                           progress=ctx.progress)
    return out
