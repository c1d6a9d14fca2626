"""The recipe search: same users and seed per variant, paired standard errors, test split untouched."""
import json
import os

import numpy as np
import pytest

from rqsid_jax import recipe_search
from rqsid_jax.errors import ConfigError
from rqsid_jax.retrieval import input_pipeline as rdata
from tests.fixtures import experiment_config


def _config():
    c = experiment_config("recipe_beauty")
    c.pipeline = experiment_config("tiny")
    c.budget.update(num_steps=8, batch_size=64, warmup_steps=2, checkpoint_every=4, log_every=4)
    c.val_users = 40
    c.beam = 10
    c.order = ("items", "reassign")
    return c


def test_search_pairs_variants_on_the_same_validation_users(tmp_path, monkeypatch):
    real = rdata.eval_examples

    def validation_only(split, vocab, which, *a, **k):
        assert which == "validation", "the recipe search read the test split"
        return real(split, vocab, which, *a, **k)

    monkeypatch.setattr(rdata, "eval_examples", validation_only)
    wd = str(tmp_path / "search")
    c = _config()
    # an invalid variant stops the search before anything is written
    bad = _config()
    bad.variants.reassign.retriever.lr_schedule = "linear"
    with pytest.raises(ConfigError, match="lr_schedule='linear'"):
        recipe_search.search(bad, wd)
    assert not os.path.exists(wd)
    text = recipe_search.search(c, wd)
    v = {n: os.path.join(wd, "variants", n) for n in c.order}
    ranks = {n: np.load(os.path.join(d, "ranks.npy")) for n, d in v.items()}
    users = {n: np.load(os.path.join(d, "users.npy")) for n, d in v.items()}
    assert users["items"].size == 40 and np.array_equal(users["items"], users["reassign"])
    # the two SID kinds really differ: the collision token vs 3 collision-free tokens
    s_tok = np.load(os.path.join(wd, "sids_token", "sids", "sids.npy"))
    s_re = np.load(os.path.join(wd, "sids_reassign", "sids", "sids.npy"))
    assert s_tok.shape[1] == 4 and s_re.shape[1] == 3 and len(np.unique(s_re, axis=0)) == len(s_re)
    # the second SID kind's upstream stages are the first's, reused (timings and all), not rerun
    for stage in ("data", "embeddings", "tokenizer"):
        m = [json.load(open(os.path.join(wd, k, stage, "metrics.json"))) for k in ("sids_token", "sids_reassign")]
        assert m[0] == m[1], stage
    # the table's paired difference is the mean and SE of per-user NDCG@10 differences
    g = lambda r: np.where((r >= 0) & (r < 10), 1 / np.log2(np.maximum(r, 0) + 2), 0.0)  # noqa: E731
    d = g(ranks["reassign"]) - g(ranks["items"])
    row = next(line for line in text.splitlines() if line.startswith("| `reassign`"))
    cells = [x.strip() for x in row.split("|")]
    assert cells[7] == "`items`"
    assert cells[9] == f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f}"
    with open(os.path.join(v["reassign"], "result.json")) as f:
        rec = json.load(f)
    hit10 = ((ranks["reassign"] >= 0) & (ranks["reassign"] < 10)).mean()
    assert rec["validation"]["recall@10"] == pytest.approx(hit10)
    assert rec["retriever"]["num_steps"] == 8 and rec["retriever"]["encoder_input"] == "items"
    # a finished variant is not trained again
    stamp = os.path.getmtime(os.path.join(v["items"], "result.json"))
    assert recipe_search.search(c, wd) == text
    assert os.path.getmtime(os.path.join(v["items"], "result.json")) == stamp
