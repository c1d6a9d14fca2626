import numpy as np
import pytest

from rqsid_jax import claims
from rqsid_jax.sid.hourglass import layer_metrics


@pytest.mark.parametrize("lo,hi,threshold,expected", [
    (0.01, 0.02, 0.0, "supported"), (-0.02, -0.01, 0.0, "refuted"), (-0.01, 0.01, 0.0, "undecided"),
    (0.005, 0.009, 0.01, "refuted"), (0.011, 0.02, 0.01, "supported")])
def test_verdict_is_the_side_of_the_threshold_the_interval_lies_on(lo, hi, threshold, expected):
    assert claims.verdict(lo, hi, threshold) == expected


def _codes(layer2, n=6000, m=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, m, n), layer2(rng, n, m), rng.integers(0, m, n)], 1)


def test_concentration_supported_on_an_hourglass_refuted_on_even_layers():
    m = 64
    hourglass = _codes(lambda rng, n, m: rng.zipf(1.5, n) % m)
    c = claims.concentration_claim(hourglass, m, resamples=200)
    assert c["verdict"] == "supported" and c["layer2_most_concentrated"]
    # the point estimates are the hourglass stage's own metrics
    h = [x["normalized_entropy"] for x in layer_metrics(hourglass, m)]
    assert c["entropy_gap"]["value"] == pytest.approx(min(h[0], h[2]) - h[1])
    assert c["entropy_gap"]["lo"] <= c["entropy_gap"]["value"] <= c["entropy_gap"]["hi"]
    even = _codes(lambda rng, n, m: rng.integers(0, m, n))
    c = claims.concentration_claim(even, m, resamples=200)
    assert c["verdict"] == "refuted" and not c["layer2_most_concentrated"]
    # a mild concentration: layer 2 measurably the most concentrated, but less than an hourglass
    mild = _codes(lambda rng, n, m: np.where(rng.random(n) < 0.03, 0, rng.integers(0, m, n)), n=60000)
    c = claims.concentration_claim(mild, m, resamples=200)
    assert c["layer2_most_concentrated"] and c["verdict"] == "refuted", c
    # too few items to tell
    few = _codes(lambda rng, n, m: np.where(rng.random(n) < 0.1, 0, rng.integers(0, m, n)), n=300)
    assert claims.concentration_claim(few, m, resamples=200)["verdict"] == "undecided"


def test_entropy_gap_interval_covers_the_population_gap():
    """Codes drawn from known token distributions: layers 1 and 3 even (normalised entropy 1),
    layer 2 Zipf-like; the 95% interval of each sample holds the population's entropy gap."""
    m = 256
    p2 = np.bincount(np.random.default_rng(99).zipf(1.3, 2_000_000) % m, minlength=m) / 2_000_000
    p2 = p2[p2 > 0]
    population_gap = 1 + (p2 * np.log2(p2)).sum() / np.log2(m)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        codes = np.stack([rng.integers(0, m, 12000), rng.choice(p2.size, 12000, p=p2), rng.integers(0, m, 12000)], 1)
        e = claims.concentration_claim(codes, m, resamples=300, seed=seed)["entropy_gap"]
        assert e["lo"] <= population_gap <= e["hi"], (seed, e, population_gap)


def test_tail_and_mitigation_claims_follow_the_intervals():
    rng = np.random.default_rng(0)
    n = 4000
    tail = rng.random(n) < 0.5
    # hit rank 0 with probability 0.3 for head users, 0.1 for tail users; -1 = missed
    ranks = np.where(rng.random(n) < np.where(tail, 0.1, 0.3), 0, -1)
    c = claims.tail_claim(ranks, tail, resamples=300)
    assert c["verdict"] == "supported" and c["lo"] < c["value"] < c["hi"]
    assert c["value"] == pytest.approx(ranks[~tail].__ge__(0).mean() - ranks[tail].__ge__(0).mean())
    assert claims.tail_claim(ranks, ~tail, resamples=300)["verdict"] == "refuted"
    assert claims.tail_claim(ranks, np.zeros(n, bool))["verdict"] == "undecided"
    # a variant that hits 5 points more of the same users; one that hits the same users
    better = np.where((ranks < 0) & (rng.random(n) < 0.06), 3, ranks)
    same = ranks.copy()
    by = {"baseline": ranks, "top@2": better, "remove_layer2": same, "mile": better}
    out = claims.evaluate_claims(_codes(lambda rng, n, m: rng.integers(0, m, n), n=500, m=16), 16, by, tail)
    assert [c["claim"] for c in out] == ["concentration", "tail", "mitigation", "mitigation"]
    verdicts = {c["variant"]: c["verdict"] for c in out if c["claim"] == "mitigation"}
    assert verdicts == {"top@2": "supported", "remove_layer2": "undecided"}  # mile is not a mitigation
    text = claims.claims_markdown(out)
    assert "top@2 minus baseline recall@10 is +0.0" in text and "**supported**" in text
    assert len([l for l in text.splitlines() if l.startswith("- ")]) == 4
