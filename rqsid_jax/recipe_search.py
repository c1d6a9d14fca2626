"""Retriever recipe search on validation: python -m rqsid_jax.recipe_search --config
configs/recipe_beauty.py --workdir runs/recipe [--variants a,b] [--table_only].

Every variant trains the retriever with the same seed and the same step budget from the SIDs
of a pipeline workdir (one per SID kind, built by the pipeline itself up to its `sids` stage),
then decodes the same fixed sample of validation users. The test split is never read here.
Per-user hit ranks are kept, so each variant's difference from its parent variant gets a
paired standard error (same users, same seed). A variant killed mid-way resumes from its
checkpoints; a finished one is skipped. Results: <workdir>/results.md, and per variant
<workdir>/variants/<name>/result.json, ranks.npy (per-user hit rank, -1 = miss) and users.npy.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rqsid_jax import markdown, pipeline
from rqsid_jax import workdir as wd
from rqsid_jax.config_check import validate_config
from rqsid_jax.errors import ConfigError, RqsidError
from rqsid_jax.retrieval import curves, evaluate
from rqsid_jax.retrieval.input_pipeline import eval_examples, sample_rows
from rqsid_jax.retrieval.metrics import hit_ranks, mean_se, per_user, recall_ndcg
from rqsid_jax.retrieval.train import train_retriever

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config (configs/recipe_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the SID workdirs and every variant's run.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run, in order (default: all in the config).")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Only rewrite the table from finished variants.")
flags.mark_flags_as_required(["config", "workdir"])

UPSTREAM_OF_SIDS = ("data", "embeddings", "tokenizer")


def sid_config(config: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
    """The pipeline config whose `sids` stage gives this SID kind (a collision handling)."""
    c = ml_collections.ConfigDict(config.pipeline.to_dict())
    c.sid_collisions = kind
    return c


def prepare_sids(config, workdir: str, kind: str) -> tuple[np.ndarray, object]:
    """(SID table, split) from <workdir>/sids_<kind>, run by the pipeline up to `sids`. Stages
    upstream of `sids` do not depend on the collision handling: a sibling SID workdir's finished
    ones are reused (pipeline.run's reuse_from: where their fingerprints match)."""
    d = os.path.join(workdir, f"sids_{kind}")
    siblings = sorted(os.path.join(workdir, o) for o in (os.listdir(workdir) if os.path.isdir(workdir) else [])
                      if o.startswith("sids_"))
    cfg = sid_config(config, kind)
    pipeline.run(cfg, d, UPSTREAM_OF_SIDS + ("sids",), progress=False, reuse_from=siblings)
    ctx = pipeline.Context(cfg, d, progress=False)
    return np.load(os.path.join(d, "sids", wd.SIDS)), ctx.split


def variant_config(config, name: str) -> ml_collections.ConfigDict:
    """The retriever config of one variant: defaults, then the budget, then its changes."""
    v = config.variants[name]
    rc = ml_collections.ConfigDict(config.pipeline.retriever.to_dict())
    rc.update(config.budget.to_dict())
    rc.update(v.get("retriever", {}))
    rc.eval_every = 0  # a fixed budget: the last parameters are the variant's result
    return rc


def run_variant(config, workdir: str, name: str, sids: np.ndarray, split) -> dict:
    """Trains one variant (resumable), decodes the validation sample, saves its ranks."""

    d = os.path.join(workdir, "variants", name)
    os.makedirs(d, exist_ok=True)
    rc = variant_config(config, name)
    t0 = time.time()
    r, params, _ = train_retriever(rc, sids, split, os.path.join(d, wd.CHECKPOINTS),
                                   log=lambda m: curves.append(os.path.join(d, wd.TRAIN_LOG), m), progress=False)
    train_s = time.time() - t0
    val = eval_examples(split, r.vocab, "validation", rc.max_history)
    val = val.subset(sample_rows(len(val), config.val_users, [config.val_seed, 99]))
    t1 = time.time()
    items, _, _ = evaluate.generate(r, params, val, config.beam, batch_size=256, progress=False)
    ranks = hit_ranks(items, val.target)
    np.save(os.path.join(d, "ranks.npy"), ranks)
    np.save(os.path.join(d, "users.npy"), val.user)
    train, _ = curves.read(os.path.join(d, wd.TRAIN_LOG))
    rec = {"variant": name, "description": config.variants[name].get("description", ""),
           "sids": config.variants[name].get("sids", "token"), "retriever": rc.to_dict(),
           "validation": recall_ndcg(items, val.target, (5, 10, 20)),
           "train_s_this_run": round(train_s, 1), "decode_s": round(time.time() - t1, 1),
           "samples_per_s": train[-1]["samples_per_s"] if train else None,
           "final_train_loss": train[-1]["train_loss"] if train else None}
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump(rec, f, indent=1)
    return rec


def table(config, workdir: str) -> str:
    """Markdown table of finished variants: validation metrics +- SE, and the paired difference
    from its parent variant +- its SE (a difference under 2 SE is not a result)."""
    metrics = ("recall@10", "ndcg@10", "recall@5", "ndcg@5")
    done = {}
    for name in config.get("order") or config.variants.keys():
        d = os.path.join(workdir, "variants", name)
        if os.path.exists(os.path.join(d, "result.json")):
            with open(os.path.join(d, "result.json")) as f:
                done[name] = (json.load(f), np.load(os.path.join(d, "ranks.npy")),
                              np.load(os.path.join(d, "users.npy")))
    lines = [f"Validation, {config.val_users} users (seed {config.val_seed}), beam {config.beam}, "
             f"{config.budget.num_steps} steps x batch {config.budget.batch_size}, training seed "
             f"{config.pipeline.retriever.seed}. Δ: paired difference from the variant named in `vs` "
             "(its parent: the same recipe but for the change named) ± SE.", ""]
    body = []
    for name, (rec, ranks, users) in done.items():
        cells = []
        for m in metrics:
            mu, se = mean_se(per_user(ranks, m))
            cells.append(f"{mu:.4f} ± {se:.4f}")
        parent = config.variants[name].get("parent", "")
        cells.append(f"`{parent}`" if parent in done else "")
        for m in ("recall@10", "ndcg@10"):
            if parent not in done:
                cells.append("")
                continue
            if not np.array_equal(users, done[parent][2]):
                raise ConfigError(f"variant {name}: decoded other validation users than {parent}")
            mu, se = mean_se(per_user(ranks, m) - per_user(done[parent][1], m))
            cells.append(f"{mu:+.4f} ± {se:.4f}")
        sps = rec.get("samples_per_s")
        cells.append(f"{sps:.0f}" if sps else "")
        body.append([f"`{name}`", rec["description"]] + cells)
    header = (["variant", "what"] + [m.replace("recall", "R").replace("ndcg", "N") for m in metrics]
              + ["vs", "Δ R@10", "Δ N@10", "samples/s (shared machine)"])
    return "\n".join(lines + markdown.table(header, body)) + "\n"


def search(config, workdir: str, names=None, table_only: bool = False) -> str:
    """Runs the named variants (all by default) not yet finished; returns the table."""
    names = list(names or config.get("order") or config.variants.keys())
    unknown = [n for n in names if n not in config.variants]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; the config has {list(config.variants)}")
    for name in names:  # every variant's whole config, before anything runs
        pc = ml_collections.ConfigDict(config.pipeline.to_dict())
        pc.retriever = variant_config(config, name)
        validate_config(pc)
    os.makedirs(workdir, exist_ok=True)
    cache = {}
    for name in names if not table_only else []:
        if os.path.exists(os.path.join(workdir, "variants", name, "result.json")):
            continue
        kind = config.variants[name].get("sids", "token")
        if kind not in cache:
            cache[kind] = prepare_sids(config, workdir, kind)
        rec = run_variant(config, workdir, name, *cache[kind])
        logging.info("recipe %s: %s", name, json.dumps(rec["validation"]))
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(table(config, workdir))
    text = table(config, workdir)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv):
    """Command-line entry: one error line and exit 1 on a user error."""
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        print(search(_CONFIG.value, _WORKDIR.value, _VARIANTS.value, _TABLE_ONLY.value))
    except RqsidError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
