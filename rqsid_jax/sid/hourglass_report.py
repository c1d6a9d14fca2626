"""The hourglass stage's outputs: analysis.json (every number), report.md with every table, and the
figures. The stage's metrics.json is the pipeline's short summary of it."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from rqsid_jax import claims, markdown
from rqsid_jax import workdir as wd
from rqsid_jax.sid import figures, hourglass, mitigations, synthetic


def markdown_table(rows: list[dict], cols: Sequence[str], fmt: str = "{:.4g}") -> str:
    """A markdown table of rows over the given columns."""
    cells = ([fmt.format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in rows)
    return "\n".join(markdown.table(cols, cells)) + "\n"


LAYER_COLS = ["layer", "entropy_bits", "normalized_entropy", "gini", "count_std", "utilization",
              "perplexity", "top1pct_share", "top10pct_share", "max_count"]


def mitigation_metrics(s: mitigations.SidSet, codebook_size: int) -> dict:
    """Per-level metrics and capacity of a SID set."""
    codes = s.sids[:, :-1]
    layers = hourglass.layer_metrics(codes, codebook_size)
    for i, (row, lvl) in enumerate(zip(layers, s.levels)):
        row["layer"] = f"{i + 1} (orig {lvl + 1})"
        row["items_with_token"] = int((codes[:, i] >= 0).sum())
    coll = s.sids[:, -1]
    return {"name": s.name, "capacity": int(s.capacity), "unique": bool(s.unique()),
            "mean_tokens": float(s.lengths.mean()), "variable_length": s.variable_length,
            "shortened_items": int((codes < 0).any(axis=1).sum()),
            "items_with_collision_token": int((coll > 0).sum()), "max_collision_token": int(coll.max()),
            "layers": layers}


def write_report(out_dir: str, codes: np.ndarray, codebook_size: int, residuals: Optional[np.ndarray] = None,
                 top_ks: Sequence[int] = (20, 50, 100), head_share: float = 0.5,
                 synthetic_cfg: Optional[dict] = None, title: str = "Hourglass analysis") -> dict:
    """The hourglass stage's analysis.json, report.md, figures and SID sets."""
    os.makedirs(out_dir, exist_ok=True)
    fig_dir = os.path.join(out_dir, "figures")
    codes = np.asarray(codes)
    base = hourglass.analyze(codes, codebook_size, residuals, head_share)
    figs = figures.all_figures(codes, codebook_size, fig_dir, residuals)
    sets = mitigations.all_mitigations(codes, codebook_size, top_ks)
    mits = [mitigation_metrics(s, codebook_size) for s in sets]
    swap = next(s for s in sets if s.name.startswith("swap"))
    figs["hourglass_swap12"] = figures.hourglass_figure(swap.sids[:, :-1], codebook_size,
                                                        os.path.join(fig_dir, "hourglass_swap12.png"),
                                                        title="After swapping layers 1 and 2")
    syn = synthetic.run(**(synthetic_cfg or {})) if synthetic_cfg is not None else None
    # the paper's first claim with its interval (the retrieval claims need a trained retriever)
    metrics = {"baseline": base, "concentration_claim": claims.concentration_claim(codes, codebook_size),
               "mitigations": mits, "synthetic": syn,
               "figures": {k: os.path.relpath(v, out_dir) for k, v in figs.items()}}
    with open(os.path.join(out_dir, wd.ANALYSIS), "w") as f:  # metrics.json is the stage summary
        json.dump(metrics, f, indent=1)
    np.save(os.path.join(out_dir, wd.HEAD_TOKENS), np.asarray(base["head_tail"]["head_tokens"], np.int32))
    for s in sets:
        np.save(wd.sid_set_path(out_dir, s.name), s.sids)
    with open(os.path.join(out_dir, wd.REPORT), "w") as f:
        f.write(render(metrics, title))
    return metrics


def render(m: dict, title: str) -> str:
    """The hourglass report's markdown."""
    b = m["baseline"]
    L = b["levels"]
    verdict = ("**Yes** - layer 2 has clearly lower entropy and higher Gini than layers 1 and 3."
               if b["hourglass"] else "**No** - layer 2 is not more concentrated than both layers 1 and 3 by the "
               "hourglass margins (0.01 of normalised entropy and of Gini).")
    s = f"# {title}\n\n{b['items']} items, {L} layers x {b['codebook_size']} codes.\n\n"
    s += f"Hourglass on this data: {verdict}\n\n"
    if "concentration_claim" in m:
        s += claims.claims_markdown([m["concentration_claim"]]) + "\n"
    s += "## Per-layer token distribution (baseline)\n\n"
    s += markdown_table(b["layers"], LAYER_COLS) + "\n"
    s += "## Path sparsity\n\n" + markdown_table(b["paths"], ["depth", "distinct_prefixes", "possible", "occupancy",
                                                       "branching_mean", "branching_min", "branching_max"]) + "\n"
    ht = b["head_tail"]
    s += (f"## Head/tail split of layer-2 tokens\n\nHead = the {ht['num_head_tokens']} most frequent layer-2 "
          f"tokens holding >= {ht['head_share']:.0%} of items: {ht['head_items']} head items, "
          f"{ht['tail_items']} tail items (saved as `head_tokens_layer2.npy`).\n\n")
    if "residual_norms" in b:
        s += "## Residual norms per layer (input of each layer)\n\n" + markdown_table(
            b["residual_norms"], ["layer", "mean", "std", "q05", "q25", "q50", "q75", "q95"]) + "\n"
    s += "## Mitigations\n\nEach SID set is followed by collision resolution (a last token numbering items that " \
         "share the visible tokens), so every item stays unique.\n\n"
    s += markdown_table(m["mitigations"], ["name", "capacity", "unique", "mean_tokens", "shortened_items",
                                   "items_with_collision_token", "max_collision_token"]) + "\n"
    for mi in m["mitigations"]:
        s += f"### {mi['name']}\n\n" + markdown_table(mi["layers"], LAYER_COLS[:5] + ["utilization", "top10pct_share", "items_with_token"]) + "\n"
    if m.get("synthetic"):
        syn = m["synthetic"]
        s += "## Synthetic experiment (paper section 4.2)\n\n"
        s += "Setup: " + ", ".join(f"{k}={v}" for k, v in syn["setup"].items()) + "\n\n"
        rows = []
        for kind in ("uniform", "long_tailed"):
            for r in syn[kind]["layers"]:
                rows.append({"input": kind, "layer": r["layer"], "entropy_bits": r["entropy_bits"],
                             "gini": r["gini"], "top10pct_share": r["top10pct_share"],
                             "layer2_more_concentrated": syn[kind]["hourglass"] if r["layer"] == 2 else ""})
        s += markdown_table(rows, ["input", "layer", "entropy_bits", "gini", "top10pct_share", "layer2_more_concentrated"])
        s += "\n"
    s += "## Figures\n\n" + "".join(f"- [{k}]({v})\n![{k}]({v})\n" for k, v in m["figures"].items())
    return s
