"""The hourglass paper's claims (Kuai et al., EMNLP 2024) tested on one run's numbers.

Each claim gets a verdict from a 95% bootstrap interval by one rule for all:
'supported' when the interval lies wholly on the paper's side of the claim's threshold,
'refuted' when it lies wholly on the other side, 'undecided' when it straddles it. The claims:

- concentration: residual quantization concentrates layer 2's tokens (the hourglass);
- tail: items whose layer-2 token is a tail token are retrieved worse than head items (Table 1);
- mitigation: removing layer 2, or its top@K tokens, retrieves better than the baseline (Table 2).
"""
from __future__ import annotations

import os

import numpy as np

from rqsid_jax.retrieval.metrics import bootstrap_interval, per_user, percentile_interval
from rqsid_jax.sid.hourglass import layer_metrics

# The project's hourglass threshold (sid/hourglass.is_hourglass): layer 2's normalised entropy
# lower, and its Gini higher, than both neighbours' by more than this. Smaller gaps can be
# measurable, but are far from the paper's hourglass, where a few layer-2 tokens hold most items.
CONCENTRATION_MARGIN = 0.01
LEVEL = 0.95


def verdict(lo: float, hi: float, threshold: float = 0.0) -> str:
    """'supported' if [lo, hi] lies above `threshold` (the paper's side), 'refuted' if below,
    else 'undecided'."""
    if lo > threshold:
        return "supported"
    if hi < threshold:
        return "refuted"
    return "undecided"


def concentration_claim(codes: np.ndarray, codebook_size: int, resamples: int = 1000, seed: int = 0) -> dict:
    """Layer 2 against its neighbours, items resampled with replacement. The verdict rests on the
    entropy gap min(H1, H3) - H2 of normalised entropies (> 0 when layer 2 is the most
    concentrated): supported above CONCENTRATION_MARGIN, refuted below it. The Gini gap
    G2 - max(G1, G3) is reported beside it, not decided on: with tens of items per token, an even
    layer's sample Gini is far from 0, so the gap is biased low by several hundredths."""
    codes = np.asarray(codes)[:, :3]
    rng = np.random.default_rng(seed)
    gaps = []
    for idx in [np.arange(len(codes))] + [rng.integers(0, len(codes), len(codes)) for _ in range(resamples)]:
        h, g = zip(*((m["normalized_entropy"], m["gini"]) for m in layer_metrics(codes[idx], codebook_size)))
        gaps.append((min(h[0], h[2]) - h[1], g[1] - max(g[0], g[2])))
    gaps = np.array(gaps)
    out = {"claim": "concentration", "threshold": CONCENTRATION_MARGIN, "items": int(len(codes))}
    for j, name in enumerate(("entropy_gap", "gini_gap")):
        # The basic (reverse-percentile) interval: resampling items adds multinomial noise to every
        # layer's counts, which moves the resampled gaps away from the estimate in the direction the
        # estimate is itself off; reflecting them about the estimate corrects that to first order.
        q_lo, q_hi = percentile_interval(gaps[1:, j], LEVEL)
        out[name] = {"value": float(gaps[0, j]), "lo": float(2 * gaps[0, j] - q_hi),
                     "hi": float(2 * gaps[0, j] - q_lo)}
    e = out["entropy_gap"]
    out["verdict"] = verdict(e["lo"], e["hi"], CONCENTRATION_MARGIN)
    out["layer2_most_concentrated"] = verdict(e["lo"], e["hi"]) == "supported"
    return out


def tail_claim(ranks: np.ndarray, tail: np.ndarray, metric: str = "recall@10", resamples: int = 2000,
               seed: int = 0) -> dict:
    """Head minus tail `metric` of one model's test users (tail: the target's layer-2 token is
    a tail token); each group resampled on its own (two independent samples)."""
    x = per_user(ranks, metric)
    head, tl = x[~tail], x[tail]
    if head.size == 0 or tl.size == 0:
        return {"claim": "tail", "metric": metric, "verdict": "undecided", "head_users": int(head.size),
                "tail_users": int(tl.size)}
    rng = np.random.default_rng(seed)
    diffs = np.array([head[rng.integers(0, head.size, head.size)].mean()
                      - tl[rng.integers(0, tl.size, tl.size)].mean() for _ in range(resamples)])
    lo, hi = percentile_interval(diffs, LEVEL)
    return {"claim": "tail", "metric": metric, "head": float(head.mean()), "tail": float(tl.mean()),
            "head_users": int(head.size), "tail_users": int(tl.size), "value": float(head.mean() - tl.mean()),
            "lo": lo, "hi": hi, "verdict": verdict(lo, hi)}


def mitigation_claim(ranks: dict, variant: str, reference: str = "baseline", metric: str = "recall@10",
                     resamples: int = 2000) -> dict:
    """`variant` minus `reference` on the same test users (paired bootstrap), the paper's claim
    being that removing layer 2 or its top@K tokens retrieves better."""
    d = per_user(ranks[variant], metric) - per_user(ranks[reference], metric)
    lo, hi = bootstrap_interval(d, resamples, LEVEL)
    return {"claim": "mitigation", "variant": variant, "metric": metric, "value": float(d.mean()), "lo": lo,
            "hi": hi, "verdict": verdict(lo, hi)}


def tail_targets(codes: np.ndarray, head_tokens: np.ndarray, target) -> np.ndarray:
    """Which test targets (item rows) hold a tail layer-2 token (none when there is no target)."""
    return ~np.isin(codes[target, 1], head_tokens) if target is not None else np.zeros(0, bool)


def is_mitigation(variant: str) -> bool:
    """The variants the paper proposes against the hourglass."""
    return variant == "remove_layer2" or variant.startswith("top@")


def evaluate_claims(codes: np.ndarray, codebook_size: int, ranks: dict, tail: np.ndarray) -> list[dict]:
    """Every claim this run can test: concentration from the codes; tail and mitigation from the
    ablation's per-user ranks (with a 'baseline' variant)."""
    out = [concentration_claim(codes, codebook_size)]
    if "baseline" in ranks:
        out.append(tail_claim(ranks["baseline"], tail))
        out += [mitigation_claim(ranks, v) for v in ranks if is_mitigation(v)]
    return out


def _interval(c: dict, digits: int = 4) -> str:
    return f"{c['value']:+.{digits}f} [{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}]"


def sentence(c: dict) -> str:
    """One line per claim: the paper's claim, the verdict, the numbers."""
    v = f"**{c['verdict']}**"
    if c["claim"] == "concentration":
        return (f"Layer 2 is the hourglass's waist (the paper: residual quantization concentrates the middle "
                f"layer): {v}. The entropy gap min(H1, H3) - H2 of normalised entropies is "
                f"{_interval(c['entropy_gap'])} ({c['items']} items resampled; the hourglass needs more than "
                f"{c['threshold']}), so layer 2 is {'' if c['layer2_most_concentrated'] else 'not '}measurably "
                f"the most concentrated layer; the Gini gap G2 - max(G1, G3) is {_interval(c['gini_gap'])}.")
    if c["claim"] == "tail" and "value" not in c:
        return (f"Tail-token items are retrieved worse (the paper's Table 1): {v}, with {c['head_users']} head "
                f"and {c['tail_users']} tail users.")
    if c["claim"] == "tail":
        return (f"Tail-token items are retrieved worse (the paper's Table 1): {v}. Baseline {c['metric']} is "
                f"{c['head']:.4f} on {c['head_users']} head users and {c['tail']:.4f} on {c['tail_users']} tail "
                f"users, head minus tail {_interval(c)}.")
    what = "Removing layer 2" if c["variant"] == "remove_layer2" else f"Removing layer 2's {c['variant']} tokens"
    return (f"{what} retrieves better (the paper's Table 2): {v}. {c['variant']} minus baseline "
            f"{c['metric']} is {_interval(c)} on the same users.")


def claims_markdown(claims: list[dict]) -> str:
    """The claims section of ablation/table.md."""
    head = [f"The paper's claims on this data ({int(LEVEL * 100)}% bootstrap intervals; supported / refuted "
            "when the interval lies wholly on one side of the claim's threshold, else undecided):", ""]
    return "\n".join(head + [f"- {sentence(c)}" for c in claims]) + "\n"



def workdir_claims(workdir: str) -> list[dict]:
    """The claims a finished workdir can test: concentration from its SIDs; tail and mitigation
    from its ablation when that finished, else tail from its evaluation stage (the retriever's
    predictions as the baseline)."""
    import ml_collections

    from rqsid_jax import ablation_carry
    from rqsid_jax import workdir as wd
    from rqsid_jax.quantization import tokenizer
    from rqsid_jax.retrieval.metrics import hit_ranks

    config = ml_collections.ConfigDict(wd.read_json(os.path.join(workdir, wd.CONFIG)))
    codes = wd.load_codes(os.path.join(workdir, "sids"))
    head = wd.load_head_tokens(os.path.join(workdir, "hourglass"))
    ranks, target = {}, None
    if os.path.exists(os.path.join(workdir, "ablation", wd.STAGE)):
        for v in config.ablation.variants:
            got = ablation_carry.load_ranks(os.path.join(workdir, "ablation", wd.file_name(v)))
            ranks[v], target = got["ranks"], got["target_row"]
    elif os.path.exists(os.path.join(workdir, "evaluation", wd.PREDICTIONS)):
        p = np.load(os.path.join(workdir, "evaluation", wd.PREDICTIONS))
        ranks["baseline"], target = hit_ranks(p["top50_rows"], p["target_row"]), p["target_row"]
    return evaluate_claims(codes, tokenizer.codebook_size(config), ranks, tail_targets(codes, head, target))


def main(argv) -> None:
    """python -m rqsid_jax.claims <workdir>...: each workdir's claims section on stdout."""
    if len(argv) < 2:
        raise SystemExit("usage: python -m rqsid_jax.claims <workdir> [<workdir> ...]")
    for w in argv[1:]:
        print(f"## {w}\n\n{claims_markdown(workdir_claims(w))}")


if __name__ == "__main__":
    import sys

    main(sys.argv)
