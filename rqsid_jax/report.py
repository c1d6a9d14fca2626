"""`<workdir>/report.md`: every stage's tables in one page, with links to every figure."""
from __future__ import annotations

import json
import os

STAGE_ORDER = ("data", "embeddings", "tokenizer", "sids", "hourglass", "retriever", "evaluation", "ablation")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def write_workdir_report(workdir: str) -> str:
    out = ["# rqsid_jax run report", "", f"Workdir: `{os.path.abspath(workdir)}`", ""]
    for stage in STAGE_ORDER:
        path = os.path.join(workdir, stage, "metrics.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            m = json.load(f)
        out += [f"## {stage}", "", "| metric | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in m.items() if not isinstance(v, (dict, list)) or
                (isinstance(v, list) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v))]
        out.append("")
        if stage == "hourglass":
            out += ["Full analysis with every table: [hourglass/report.md](hourglass/report.md)", ""]
            fig_dir = os.path.join(workdir, "hourglass", "figures")
            for f in sorted(os.listdir(fig_dir)) if os.path.isdir(fig_dir) else []:
                out.append(f"![{f}](hourglass/figures/{f})")
            out.append("")
        if stage == "retriever" and os.path.exists(os.path.join(workdir, "retriever", "figures", "learning_curve.png")):
            out += ["Validation curve: `retriever/history.json`; every logged step: `retriever/log.jsonl`.", "",
                    "![learning_curve.png](retriever/figures/learning_curve.png)", ""]
        table = os.path.join(workdir, stage, "table.md")
        if stage == "ablation" and os.path.exists(table):
            out += ["Retriever variants (the hourglass paper's Table 2 on this data):", "",
                    open(table).read(), "Per variant: `ablation/<variant>/metrics.json`, `predictions_test.npz`.", ""]
    path = os.path.join(workdir, "report.md")
    text = "\n".join(out) + "\n"
    if not os.path.exists(path) or open(path).read() != text:  # an up-to-date workdir is only read
        with open(path, "w") as f:
            f.write(text)
    return path
