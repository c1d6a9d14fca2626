"""The hourglass paper's Table 2 on this data: one retriever per variant, same budget, same
test users, Recall/NDCG@K side by side.

A variant is a loss on the baseline SIDs ('baseline' = cross-entropy, 'focal', 'mile'), a
mitigated SID set from the hourglass stage trained with cross-entropy ('remove_layer2',
'swap12', 'top@K'), or TIGER's collision-token SIDs ('collision_token', against collision-free
baseline SIDs). Each variant lives in `<workdir>/ablation/<variant>/` (checkpoints,
`metrics.json`, `predictions_test.npz`, `ranks.npz`); a variant whose metrics.json exists is
done, so a killed run resumes at the variant (and training step) it stopped at. With
`ablation.results_dir` set, finished variants are also carried to and from that folder
(ablation_carry.py), so a table too long for one machine's session is built over several.
"""
from __future__ import annotations

import logging
import os
import time

import ml_collections
import numpy as np

from rqsid_jax import ablation_carry, claims, markdown
from rqsid_jax import workdir as wd
from rqsid_jax.errors import ConfigError
from rqsid_jax.quantization import tokenizer
from rqsid_jax.retrieval import evaluate
from rqsid_jax.retrieval.input_pipeline import eval_examples, sample_rows
from rqsid_jax.retrieval.metrics import bootstrap_interval, mean_se, per_user
from rqsid_jax.retrieval.train import train_retriever
from rqsid_jax.sid.stage import load_sid_set

LOSS_VARIANTS = {"baseline": "ce", "focal": "focal", "mile": "mile"}


def default_config() -> ml_collections.ConfigDict:
    """The Table 2 ablation's variants, losses' gamma, budget and test users."""
    c = ml_collections.ConfigDict()
    c.variants = ("baseline", "focal", "mile", "remove_layer2", "top@20", "top@100")
    c.focal_gamma = 2.0  # Lin et al. 2017's default
    c.mile_gamma = 1.0
    c.test_users = 5000  # fixed random subset of test users, the same for every variant (0 = all)
    c.beam = 50
    c.ks = (1, 3, 5, 10, 30, 50)  # the paper's Table 2 columns
    # A folder that keeps each finished variant's metrics.json and ranks.npz beyond this workdir
    # (e.g. results/<config> in the repo), and gives them back to a later run with the same key
    # (ablation_carry.py). Empty: the workdir only.
    c.results_dir = ""
    return c


def variant_retriever_config(base: ml_collections.ConfigDict, ab: ml_collections.ConfigDict,
                             variant: str, top_ks) -> ml_collections.ConfigDict:
    """The retriever config of one variant: the base config with its SID set and loss."""
    c = ml_collections.ConfigDict(base.to_dict())
    if variant in LOSS_VARIANTS:
        c.sids, c.loss = "baseline", LOSS_VARIANTS[variant]
        c.gamma = {"focal": ab.focal_gamma, "mile": ab.mile_gamma}.get(variant, c.gamma)
    elif variant in ("remove_layer2", "swap12", "collision_token") or (
            variant.startswith("top@") and variant[4:].isdigit() and int(variant[4:]) in top_ks):
        c.sids, c.loss = variant, "ce"
    else:
        raise ConfigError(f"ablation.variants={tuple(ab.variants)!r}: '{variant}' is not one of "
                          f"{sorted(LOSS_VARIANTS)}, remove_layer2, swap12, collision_token or top@K with K in "
                          f"hourglass.top_ks={list(top_ks)}")
    return c


def run_variant(ctx, variant: str, rc, sids: np.ndarray, test_rows: np.ndarray, ks, key: str) -> dict:
    """Trains one variant's retriever (resumable) and evaluates it on the fixed test users."""
    ab = ctx.config.ablation
    d = os.path.join(ctx.dir("ablation"), wd.file_name(variant))
    os.makedirs(d, exist_ok=True)
    last = {}
    t = time.time()
    r, params, history = train_retriever(rc, sids, ctx.split, ctx.checkpoints("ablation", wd.file_name(variant)), ctx.mesh,
                                         log=lambda m: last.update(m) if "train_loss" in m else None,
                                         progress=ctx.progress)
    train_s = time.time() - t
    ex = eval_examples(ctx.split, r.vocab, "test", rc.max_history).subset(test_rows)
    codes = wd.load_codes(ctx.dir("sids"))
    head = wd.load_head_tokens(ctx.dir("hourglass"))
    t = time.time()
    # Head/tail by the target's layer-2 code in the baseline SIDs, for every variant alike.
    res = evaluate.evaluate(r, params, ex, ab.beam, ks=ks, head_tokens=head, layer2_codes=codes[:, 1],
                            batch_size=ctx.config.evaluation.batch_size, progress=ctx.progress)
    np.savez(os.path.join(d, wd.PREDICTIONS), test_rows=test_rows, top_rows=res["predictions"],
             target_row=ex.target)
    ablation_carry.save_ranks(d, test_rows, res["predictions"], ex.target)
    m = {"variant": variant, "key": key, "sids": rc.sids, "loss": rc.loss, "gamma": rc.gamma, "steps": rc.num_steps,
         "train_seconds": train_s, "eval_seconds": time.time() - t, "final_train_loss": last.get("train_loss"),
         "test_users": int(len(ex)), "all": res["metrics"], "head": res["head"], "tail": res["tail"],
         "validation": history}
    wd.write_json(os.path.join(d, wd.METRICS), m)  # written last: marks the variant done
    return m


def stage_ablation(ctx) -> dict:
    """The ablation stage: every variant (finished ones skipped), then the table."""
    ab = ctx.config.ablation
    top_ks = tuple(ctx.config.hourglass.top_ks)
    ks = tuple(sorted(set(ab.ks) | {10}))  # Recall@10 is in every table
    if ab.beam < ks[-1]:
        raise ConfigError(f"ablation.beam={ab.beam} is smaller than the largest K in ablation.ks={list(ab.ks)}")
    configs = {v: variant_retriever_config(ctx.config.retriever, ab, v, top_ks) for v in ab.variants}
    test_rows = sample_rows(ctx.split.num_users, ab.test_users, [ctx.config.seed, 7])
    codes, head = wd.load_codes(ctx.dir("sids")), wd.load_head_tokens(ctx.dir("hourglass"))
    rows, ranks, target = [], {}, None
    for v, rc in configs.items():
        sids = load_sid_set(ctx, rc.sids)
        key = ablation_carry.variant_key(rc, sids, codes, head, ctx.split, test_rows)
        folder = os.path.join(ctx.shared("ablation"), wd.file_name(v))  # the same on every process
        if os.path.exists(os.path.join(folder, wd.METRICS)):
            logging.info("ablation %s: done, skipped", v)
        else:
            folder = os.path.join(ctx.dir("ablation"), wd.file_name(v))  # this process's copy
            if ab.results_dir and ablation_carry.carry_in(ab.results_dir, v, key, folder):
                logging.info("ablation %s: done elsewhere, taken from %s", v, ab.results_dir)
            else:
                logging.info("ablation %s: training (%s SIDs, %s loss)", v, rc.sids, rc.loss)
                run_variant(ctx, v, rc, sids, test_rows, ks, key)
        m = wd.read_json(os.path.join(folder, wd.METRICS))
        rows.append(m)
        if ab.results_dir and ctx.is_main and m.get("key") == key:
            ablation_carry.carry_out(folder, ab.results_dir, v, key)
        got = ablation_carry.load_ranks(folder)
        if not np.array_equal(got["test_rows"], test_rows):
            raise ConfigError(f"ablation {v}: evaluated other test users than this config's; remove "
                              f"{os.path.join(ctx.shared('ablation'), wd.file_name(v))} to redo it")
        ranks[v], target = got["ranks"], got["target_row"]
    table = table_markdown(rows, tuple(ab.ks))
    # tail items as in the tables above: the target's baseline layer-2 token is not a head token
    tail = claims.tail_targets(codes, head, target)
    if "baseline" in ranks and len(ranks) > 1:
        table += "\n" + paired_markdown(ranks, "baseline", tail)
    verdicts = claims.evaluate_claims(codes, tokenizer.codebook_size(ctx.config), ranks, tail)
    table += "\n" + claims.claims_markdown(verdicts)
    with open(os.path.join(ctx.dir("ablation"), "table.md"), "w") as f:
        f.write(table)
    return {"test_users": int(test_rows.size), "ks": list(ab.ks),
            "variants": {r["variant"]: {k: r[k] for k in ("sids", "loss", "gamma", "steps", "train_seconds",
                                                          "final_train_loss", "all", "head", "tail")}
                         for r in rows},
            "claims": verdicts}


def table_markdown(rows: list[dict], ks) -> str:
    """Recall and NDCG tables (the paper's Table 2 layout) plus head/tail Recall@10."""
    n = rows[0]["test_users"] if rows else 0
    out = [f"Test users: {n} (the same for every variant). ± is the binomial standard error of Recall@10.", ""]
    for metric, title in (("recall", "Recall"), ("ndcg", "NDCG")):
        out += markdown.table(["variant"] + [f"{title}@{k}" for k in ks],
                              ([r["variant"]] + [f"{r['all'][f'{metric}@{k}']:.4f}" for k in ks] for r in rows))
        out.append("")
    body = []
    for r in rows:
        p = r["all"]["recall@10"]
        se = (p * (1 - p) / max(r["test_users"], 1)) ** 0.5
        body.append([r["variant"], r["sids"], r["loss"], r["steps"], f"{r['train_seconds'] / 60:.1f}",
                     f"{p:.4f} ± {se:.4f}", f"{r['head']['recall@10']:.4f}", f"{r['tail']['recall@10']:.4f}"])
    out += markdown.table(["variant", "SIDs", "loss", "steps", "train min", "Recall@10", "head R@10", "tail R@10"],
                          body)
    return "\n".join(out) + "\n"


PAIRED_METRICS = ("recall@10", "ndcg@10", "recall@50")


def paired_markdown(ranks: dict, reference: str, tail: np.ndarray, resamples: int = 2000) -> str:
    """Each variant minus `reference` on the same test users: the mean per-user difference, its
    paired SE and a 95% paired bootstrap interval, for PAIRED_METRICS and tail-item Recall@10
    (targets whose layer-2 token is a tail token). An interval that holds 0 is not a result."""
    out = [f"Paired differences from `{reference}` (same {ranks[reference].size} test users): mean ± paired "
           f"SE [95% bootstrap interval, {resamples} resamples of users].", ""]
    body = []
    for v, r in ranks.items():
        if v == reference:
            continue
        cells = [v]
        for m, mask in [(m, slice(None)) for m in PAIRED_METRICS] + [("recall@10", tail)]:
            diff = (per_user(r, m) - per_user(ranks[reference], m))[mask]
            mu, se = mean_se(diff)
            lo, hi = bootstrap_interval(diff, resamples)
            cells.append(f"{mu:+.4f} ± {se:.4f} [{lo:+.4f}, {hi:+.4f}]")
        body.append(cells)
    header = ["variant"] + [f"Δ {m.replace('recall', 'R').replace('ndcg', 'N')}" for m in PAIRED_METRICS] + [
        "Δ tail R@10"]
    return "\n".join(out + markdown.table(header, body)) + "\n"
