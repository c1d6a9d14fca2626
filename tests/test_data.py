import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rqsid_jax.data import load_dataset, read_p5, read_raw_amazon, read_user_interactions
from rqsid_jax.data.dataset import ItemTable, SequenceDataset, hash_user, kcore
from rqsid_jax.data.embeddings import item_embeddings
from rqsid_jax.data.text import item_text
from rqsid_jax.errors import DataError
from tests.fixtures import experiment_config, write_raw


def _reviews_5core():
    # u1..u5 each review items a..e; timestamps chosen so order differs from file order.
    rows = []
    for k, u in enumerate(["u1", "u2", "u3", "u4", "u5"]):
        for j, a in enumerate(["a", "b", "c", "d", "e"]):
            rows.append((u, a, 100 + ((j * 7 + k) % 5)))
    return rows


def test_raw_reader_orders_by_time_with_stable_ties(tmp_path):
    rows = _reviews_5core()
    meta = ["{'asin': 'a', 'title': 'Red \"Lip\" Gloss', 'brand': 'Acme', 'price': 3.5, "
            "'categories': [['Beauty', 'Makeup', 'Lips']]}",
            '{"asin": "b", "title": "JSON line", "categories": [["Beauty"]]}']
    r, m = write_raw(tmp_path, rows, meta)
    ds = read_raw_amazon(r, m, name="t")
    assert ds.num_users == 5 and ds.num_items == 5 and ds.num_interactions == 25
    # u1 (k=0): times a=100,b=102,c=104,d=101,e=103 -> a d b e c
    idx = {a: i for i, a in enumerate(ds.items.asins)}
    assert [ds.items.asins[i] for i in ds.sequences[0]] == ["a", "d", "b", "e", "c"]
    # ties: u with equal times keeps file order
    r2, _ = write_raw(tmp_path, [(u, a, 5) for u in "vwxyz" for a in "pqrst"], [])
    ds2 = read_raw_amazon(r2, None, name="t2")
    assert [ds2.items.asins[i] for i in ds2.sequences[3]] == list("pqrst")
    a = idx["a"]
    assert ds.items.titles[a] == 'Red "Lip" Gloss' and ds.items.brands[a] == "Acme"
    assert ds.items.categories[a] == ["Beauty", "Makeup", "Lips"] and ds.items.prices[a] == 3.5
    assert ds.items.titles[idx["b"]] == "JSON line"
    assert item_text(ds.items, a) == 'Title: Red "Lip" Gloss; Price: 3.50; Brand: Acme; Categories: Beauty, Makeup, Lips'


def test_split_leave_one_out(tmp_path):
    r, _ = write_raw(tmp_path, _reviews_5core(), [])
    ds = read_raw_amazon(r, None)
    sp = ds.split(max_history=3)
    seq = ds.sequences[0]
    np.testing.assert_array_equal(sp.train[0], seq[:3])
    np.testing.assert_array_equal(sp.valid_history[0], seq[:3])
    assert sp.valid_target[0] == seq[3] and sp.test_target[0] == seq[4]
    np.testing.assert_array_equal(sp.test_history[0], seq[1:4])  # capped to the latest 3
    assert sp.user_tokens[0] == hash_user("u1") and 0 <= sp.user_tokens.max() < 2000


def test_kcore_iterates_to_fixed_point():
    users = ["u1", "u2", "u3"]
    seqs = [[1, 2, 3], [1, 2, 3], [1, 2, 4]]
    # k=2: item 4 has one interaction -> u3 keeps [1,2]; all remaining have >= 2.
    u, s = kcore(users, seqs, 2)
    assert u == ["u1", "u2", "u3"] and s == [[1, 2, 3], [1, 2, 3], [1, 2]]
    # k=3: items 3 (2 uses), 4 dropped -> all users have 2 items < 3 -> everyone removed.
    u, s = kcore(users, seqs, 3)
    assert u == [] and s == []


def test_raw_reader_applies_kcore(tmp_path):
    rows = _reviews_5core() + [("u6", "a", 1), ("u6", "z", 2)]  # u6 has 2 interactions, z one
    r, _ = write_raw(tmp_path, rows, [])
    ds = read_raw_amazon(r, None, min_count=5)
    assert ds.num_users == 5 and "z" not in ds.items.asins


def test_bad_lines_skipped_below_threshold(tmp_path, caplog):
    rows = [(f"u{k}", f"i{j}", j) for k in range(25) for j in range(5)]  # 125 good lines
    r, _ = write_raw(tmp_path, rows, [], extra_review_lines=["{not json"])
    ds = read_raw_amazon(r, None)
    assert ds.num_interactions == 125
    assert any("skipped 1 of 126" in rec.message for rec in caplog.records)


def test_bad_lines_above_threshold_is_error_naming_line(tmp_path):
    rows = [("u1", f"i{j}", j) for j in range(5)]
    r, _ = write_raw(tmp_path, rows, [], extra_review_lines=["oops", '{"reviewerID": "x"}'])
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz: 2 of 7 lines .* first bad line 6"):
        read_raw_amazon(r, None)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_is_an_error_naming_the_file(tmp_path, damage):
    # 2,000 good lines: losing the tail would be far under the 1% bad-line threshold
    rows = [(f"u{k}", f"i{j}", j) for k in range(400) for j in range(5)]
    r, _ = write_raw(tmp_path, rows, [])
    data = bytearray(open(r, "rb").read())
    if damage == "truncated":
        data = data[: len(data) * 6 // 10]
    else:
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    open(r, "wb").write(bytes(data))
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz: truncated or corrupt compressed file after line \d+"):
        read_raw_amazon(r, None)


def test_missing_file_names_path_and_format(tmp_path):
    with pytest.raises(DataError, match=r"reviews_X_5.json.gz: file not found \(expected JSON lines"):
        read_raw_amazon(str(tmp_path / "reviews_X_5.json.gz"))
    with pytest.raises(DataError, match="sequential_data.txt"):
        load_dataset("toys", str(tmp_path))


def test_p5_reader_and_unknown_item(tmp_path):
    d = tmp_path / "mini"
    d.mkdir()
    (d / "sequential_data.txt").write_text("1 1 2 3 4\n2 2 3 1 4 2\n")
    (d / "datamaps.json").write_text(json.dumps({"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}}))
    (d / "item_meta.jsonl").write_text(
        '{"item_id": 2, "asin": "A2", "title": "T2", "attributes": ["Unknown", "Skin"]}\n')
    ds = read_p5(str(d))
    assert ds.items.asins == ["A1", "A2", "A3", "A4"]
    np.testing.assert_array_equal(ds.sequences[1], [1, 2, 0, 3, 1])
    assert ds.items.brands[1] == "" and ds.items.categories[1] == ["Skin"] and ds.items.titles[1] == "T2"
    (d / "sequential_data.txt").write_text("1 1 2 3 4\n2 2 9\n")
    with pytest.raises(DataError, match=r"sequential_data.txt:2: item id 9"):
        read_p5(str(d))


def test_user_interactions_and_embedding_errors(tmp_path):
    emb = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "i.csv").write_text("user,item,time\nx,2,5\nx,1,3\nx,0,9\ny,3,1\ny,0,2\ny,1,3\n")
    ds = read_user_interactions(str(tmp_path / "i.csv"), str(tmp_path / "e.npy"))
    np.testing.assert_array_equal(ds.sequences[0], [1, 2, 0])
    assert ds.embeddings.shape == (4, 3)
    (tmp_path / "bad.csv").write_text("x,2\nx,7\n")
    with pytest.raises(DataError, match=r"bad.csv:2: item 7 out of range \[0, 4\)"):
        read_user_interactions(str(tmp_path / "bad.csv"), str(tmp_path / "e.npy"))
    emb[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", emb)
    with pytest.raises(DataError, match="NaN/inf in 1 rows, first at item index 2"):
        read_user_interactions(str(tmp_path / "i.csv"), str(tmp_path / "nan.npy"))
    np.save(tmp_path / "short.npy", np.zeros((3, 3), np.float32))
    (tmp_path / "ok.csv").write_text("x,0\nx,1\nx,2\n")
    ds = read_user_interactions(str(tmp_path / "ok.csv"), str(tmp_path / "short.npy"))
    from rqsid_jax.data.dataset import validate_embeddings
    with pytest.raises(DataError, match="3 embedding rows but the dataset has 5 items"):
        validate_embeddings(np.zeros((3, 2), np.float32), 5, "x.npy")
    # Pickled object arrays are refused, never loaded.
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain numeric"):
        read_user_interactions(str(tmp_path / "ok.csv"), str(tmp_path / "obj.npy"))


def test_collaborative_embeddings_use_training_part_only(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, 8).astype(np.int32) for _ in range(200)]
    items = ItemTable.bare([str(i) for i in range(40)])
    ds = SequenceDataset("t", items, [f"u{i}" for i in range(200)], seqs)
    e1 = item_embeddings(ds, ds.split(), "collaborative", str(tmp_path / "a"), dim=8)
    assert e1.shape == (40, 8) and np.isfinite(e1).all()
    # Items 30..39 never occur in training: their vectors carry no co-occurrence signal.
    assert np.abs(e1[30:]).mean() < np.abs(e1[:30]).mean()
    # The validation and test items (the last two of every sequence) replaced by others:
    # the same training part, so the same embeddings, through the pipeline's function.
    changed = [np.concatenate([s[:-2], rng.integers(0, 40, 2).astype(np.int32)]) for s in seqs]
    ds2 = SequenceDataset("t", items, [f"u{i}" for i in range(200)], changed)
    assert any((a[-2:] != b[-2:]).any() for a, b in zip(seqs, changed))
    np.testing.assert_array_equal(item_embeddings(ds2, ds2.split(), "collaborative", str(tmp_path / "b"), dim=8), e1)
    # ... while a changed training item does change them, and so does the seed
    trained = [s.copy() for s in seqs]
    trained[0][0] = (trained[0][0] + 1) % 30
    ds3 = SequenceDataset("t", items, [f"u{i}" for i in range(200)], trained)
    assert not np.array_equal(item_embeddings(ds3, ds3.split(), "collaborative", str(tmp_path / "c"), dim=8), e1)
    assert not np.array_equal(item_embeddings(ds, ds.split(), "collaborative", str(tmp_path / "a"), dim=8,
                                              seed=1), e1)


def test_missing_item_text_is_said_or_refused(tmp_path, caplog):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 10, 6).astype(np.int32) for _ in range(30)]
    ds = SequenceDataset("notext", ItemTable.bare([str(i) for i in range(10)]), [f"u{i}" for i in range(30)], seqs)
    with pytest.raises(DataError, match="notext: embeddings.method='wordllama' needs item text"):
        item_embeddings(ds, ds.split(), "wordllama")
    e = item_embeddings(ds, ds.split(), "auto", dim=8)
    np.testing.assert_array_equal(e, item_embeddings(ds, ds.split(), "collaborative", dim=8))
    assert any("no item text" in r.message for r in caplog.records)


def test_embeddings_stage_fingerprint_covers_the_seed():
    from rqsid_jax import pipeline
    c = experiment_config("tiny")
    a = pipeline.Context(c, "/unused").fingerprint("embeddings")
    c.seed += 1  # the collaborative method draws its cold-item vectors from the seed
    assert pipeline.Context(c, "/unused").fingerprint("embeddings") != a


def test_tfds_builder_roundtrip_without_tensorflow(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_raw(manual, _reviews_5core(), ["{'asin': 'a', 'title': 'x'}"], category="Toys_and_Games")
    code = f"""
import sys
from rqsid_jax.data.tfds_builder import build
build('toys', {str(manual)!r}, {str(tmp_path / 'tfds')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    read = f"""
import sys, json
import tensorflow_datasets as tfds
src = tfds.data_source('amazon_reviews/toys', data_dir={str(tmp_path / 'tfds')!r})
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
out = {{k: sorted((r['user_id'].decode(), list(map(int, r['history'])), int(r['target'])) for r in src[k]) for k in src}}
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", read], check=True, capture_output=True, text=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    ds = load_dataset("toys", str(manual))
    sp = ds.split()
    expect = sorted((u, list(map(int, sp.test_history[i])), int(sp.test_target[i])) for i, u in enumerate(sp.user_ids))
    assert [tuple(x) for x in out["test"]] == expect
    assert len(out["validation"]) == 5
    # train: the retriever's training examples, one per (capped history, next item) pair
    from rqsid_jax.retrieval.input_pipeline import train_examples
    from rqsid_jax.retrieval.sid_vocab import SidVocab
    ex = train_examples(sp, SidVocab.from_sids(np.zeros((ds.num_items, 3), np.int32) + np.arange(3), 16))
    want = sorted((sp.user_ids[u], h[h >= 0].tolist(), int(t)) for u, h, t in zip(ex.user, ex.history, ex.target))
    assert [tuple(x) for x in out["train"]] == want and len(want) > 5


@pytest.mark.realdata
def test_real_counts(data_dir):
    for name, (u, i, n) in {"beauty": (22363, 12101, 198502), "sports": (35598, 18357, 296337)}.items():
        ds = load_dataset(name, data_dir)
        assert (ds.num_users, ds.num_items, ds.num_interactions) == (u, i, n)
        sp = ds.split()
        assert len(sp.test_target) == u and len(sp.valid_target) == u
        assert all(sp.test_target[k] == s[-1] for k, s in enumerate(ds.sequences))
        assert all(sp.valid_target[k] == s[-2] for k, s in enumerate(ds.sequences))
        assert max(len(h) for h in sp.test_history) == 20


@pytest.mark.realdata
def test_beauty_embeddings_cached(data_dir, tmp_path):
    ds = load_dataset("beauty", data_dir)
    e = item_embeddings(ds, None, "auto", str(tmp_path))
    assert e.shape == (12101, 512) and np.isfinite(e).all()
    mtime = os.path.getmtime(tmp_path / "embeddings.npy")
    e2 = item_embeddings(ds, None, "auto", str(tmp_path))
    np.testing.assert_array_equal(e, e2)
    assert os.path.getmtime(tmp_path / "embeddings.npy") == mtime


def test_tiny_dataset_is_private_and_never_trusted_stale(tmp_path, monkeypatch):
    from rqsid_jax.data.tiny import ensure_tiny_dataset, tiny_dataset_files
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = ensure_tiny_dataset()
    assert d.startswith(str(tmp_path / "cache"))
    want = tiny_dataset_files()
    path = os.path.join(d, "reviews_tiny_5.json.gz")
    with open(path, "r+b") as f:  # a stale or tampered copy (here: cut short)
        f.truncate(100)
    assert ensure_tiny_dataset() == d
    assert {n: open(os.path.join(d, n), "rb").read() for n in want} == want
    assert tiny_dataset_files() == want  # the same bytes each time (no timestamp in the gzip header)
    ds = load_dataset("tiny", d)
    assert ds.num_users > 300


def test_loading_a_config_writes_nothing_and_locks_it(tmp_path, monkeypatch):
    """configs/tiny.py names no directory: its dataset is generated when the data layer first
    reads it, never when the config is loaded. Loaded like the launcher does, a config is
    locked: a mistyped field is an error, not a new field."""
    from rqsid_jax.config_check import load_config_file
    from rqsid_jax.data import load_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    c = experiment_config("tiny")
    assert c.data_dir == "" and not (tmp_path / "cache").exists()
    ds = load_dataset(c.dataset, c.data_dir, c.data_format)
    assert (tmp_path / "cache" / "rqsid_jax").is_dir() and ds.num_items > 0
    locked = load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny.py"))
    locked.retriever.num_steps = 7  # an existing field can change
    with pytest.raises(AttributeError):
        locked.retriever.num_step = 7
