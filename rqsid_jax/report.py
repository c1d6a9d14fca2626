"""`<workdir>/report.md`: every stage's tables in one page, with links to every figure."""
from __future__ import annotations

import os

from rqsid_jax import markdown
from rqsid_jax import workdir as wd
from rqsid_jax.stages import STAGES  # the one stage list, in run order

# Published test figures under the same protocol (TIGER's Table; shared/data/amazon2014/README.md):
# (R@5, N@5, R@10, N@10)
PUBLISHED = {
    "beauty": {"TIGER (paper)": (.0454, .0321, .0648, .0384), "SASRec (TIGER's paper)": (.0387, .0249, .0605, .0318)},
    "sports": {"TIGER (paper)": (.0264, .0181, .0400, .0225), "SASRec (TIGER's paper)": (.0233, .0154, .0350, .0192)},
    "toys": {"TIGER (paper)": (.0521, .0371, .0712, .0432), "SASRec (TIGER's paper)": (.0463, .0306, .0675, .0374)},
}
RESULT_KS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@50", "ndcg@50")


def _load(workdir: str, stage: str):
    path = os.path.join(workdir, stage, wd.METRICS)
    return wd.read_json(path) if os.path.exists(path) else None


def results_table(workdir: str, dataset: str = "") -> list[str]:
    """Test Recall/NDCG@K of this workdir's generative retriever (overall, head, tail) and SASRec
    side by side with the published figures, plus the retriever's probes."""
    ev, base, ret = _load(workdir, "evaluation"), _load(workdir, "baseline"), _load(workdir, "retriever")
    rows = []
    if ev and "test" in ev:
        t = ev["test"]
        rows.append(("generative retriever (this run)", t["all"], (ret or {}).get("wall_seconds")))
        for part in ("head", "tail"):
            if t.get(part):
                rows.append((f"  {part} targets ({t[part]['users']} users)", t[part], None))
    if base and "test" in base:
        rows.append(("SASRec (this run)", base["test"], base.get("wall_seconds")))
    if not rows:
        return []
    header = ["model"] + [k.replace("recall", "R").replace("ndcg", "N") for k in RESULT_KS] + ["training stage s"]
    body = [[name] + [f"{m[k]:.4f}" if k in m else "" for k in RESULT_KS] + [f"{sec:.0f}" if sec is not None else ""]
            for name, m, sec in rows]
    body += [[name] + [f"{v:.4f}" for v in published] + [""] * (len(header) - 1 - len(published))
             for name, published in PUBLISHED.get(dataset, {}).items()]
    out = ["## Results (test, every user)", ""] + markdown.table(header, body)
    out.append("")
    if ev and ev.get("test_given_layer1"):
        g = ev["test_given_layer1"]
        out.append(f"Given-layer-1 probe (first {g['given_layer1'].get('users', '')} test users): R@10 "
                   f"{g['given_layer1'].get('recall@10', float('nan')):.4f} with the true first token vs "
                   f"{g['same_users_baseline'].get('recall@10', float('nan')):.4f} without.")
    if ev and ev.get("test_unconstrained_invalid"):
        inv = ev["test_unconstrained_invalid"]
        out.append("Unconstrained decoding, invalid-ID ratio: "
                   + ", ".join(f"{k} {v:.3f}" for k, v in inv.items()) + ".")
    out.append("")
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def write_workdir_report(workdir: str) -> str:
    """Writes <workdir>/report.md (only when its text changes); returns its path."""
    out = ["# rqsid_jax run report", "", f"Workdir: `{os.path.abspath(workdir)}`", ""]
    cfg_path = os.path.join(workdir, wd.CONFIG)
    dataset = wd.read_json(cfg_path).get("dataset", "") if os.path.exists(cfg_path) else ""
    out += results_table(workdir, dataset)
    for stage in STAGES:
        m = _load(workdir, stage)
        if m is None:
            continue
        out += [f"## {stage}", ""] + markdown.table(
            ["metric", "value"], ([k, _fmt(v)] for k, v in m.items() if not isinstance(v, (dict, list)) or
                                  (isinstance(v, list) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v))))
        out.append("")
        if stage == "hourglass":
            out += ["Full analysis with every table: [hourglass/report.md](hourglass/report.md)", ""]
            fig_dir = os.path.join(workdir, "hourglass", "figures")
            for f in sorted(os.listdir(fig_dir)) if os.path.isdir(fig_dir) else []:
                out.append(f"![{f}](hourglass/figures/{f})")
            out.append("")
        if stage in ("retriever", "baseline") and os.path.exists(os.path.join(workdir, stage, wd.LEARNING_CURVE)):
            out += [f"Validation curve: `{stage}/{wd.HISTORY}`; every logged step: `{stage}/{wd.TRAIN_LOG}`.", "",
                    f"![learning_curve.png]({stage}/{wd.LEARNING_CURVE})", ""]
        table = os.path.join(workdir, stage, "table.md")
        if stage == "ablation" and os.path.exists(table):
            out += ["Retriever variants (the hourglass paper's Table 2 on this data):", "",
                    open(table).read(), "Per variant: `ablation/<variant>/metrics.json`, `ranks.npz` (and `predictions_test.npz` "
                    "where it was trained in this workdir).", ""]
    path = os.path.join(workdir, wd.REPORT)
    text = "\n".join(out) + "\n"
    if not os.path.exists(path) or open(path).read() != text:  # an up-to-date workdir is only read
        with open(path, "w") as f:
            f.write(text)
    return path
