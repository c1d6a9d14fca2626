import copy
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rqsid_jax import claims, context, pipeline
from rqsid_jax.data.tiny import ensure_tiny_dataset
from rqsid_jax.config_check import validate_config
from rqsid_jax.errors import ConfigError
from rqsid_jax.sid.stage import load_sid_set
from tests.fixtures import experiment_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mtimes(workdir):
    return {s: os.path.getmtime(os.path.join(workdir, s, "stage.json"))
            for s in pipeline.STAGES if os.path.exists(os.path.join(workdir, s, "stage.json"))}


def _launch(workdir, *extra):
    return [sys.executable, "-m", "rqsid_jax.launch", "--config", "configs/tiny.py", "--workdir", str(workdir),
            "--noprogress", *extra]


def _kill_at_first_checkpoint(workdir, ckpt):
    """Launches the tiny pipeline and kills it (SIGKILL) once `ckpt` holds a finished step."""
    p = subprocess.Popen(_launch(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and any(d.isdigit() for d in os.listdir(ckpt))):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_kill_and_rerun_finishes_without_redoing_finished_stages(tmp_path):
    wd = tmp_path / "wd"
    _kill_at_first_checkpoint(wd, wd / "tokenizer" / "checkpoints")
    assert (wd / "embeddings" / "stage.json").exists() and not (wd / "sids" / "stage.json").exists()
    before = _mtimes(wd)
    r = subprocess.run(_launch(wd), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    after = _mtimes(wd)
    assert set(after) == set(experiment_config("tiny").stages)
    for s in before:  # finished stages were not redone
        assert after[s] == before[s], s
    # Artifacts of the workdir contract.
    codes = np.load(wd / "sids" / "codes.npy")
    items = json.load(open(wd / "sids" / "item_ids.json"))
    assert codes.dtype == np.int32 and codes.shape == (len(items["item_ids"]), 3)
    sids = np.load(wd / "sids" / "sids.npy")
    assert np.unique(sids, axis=0).shape[0] == sids.shape[0]
    for s in experiment_config("tiny").stages:
        json.load(open(wd / s / "metrics.json"))
    assert "hourglass/report.md" in open(wd / "report.md").read()
    # the hourglass stage's full analysis is kept beside its summary (it used to be overwritten)
    analysis = json.load(open(wd / "hourglass" / "analysis.json"))
    assert analysis["figures"] and analysis["baseline"]["head_tail"]["head_tokens"]
    assert "hourglass" in json.load(open(wd / "hourglass" / "metrics.json"))
    pred = np.load(wd / "evaluation" / "predictions_test.npz")
    assert pred["top50_rows"].shape[0] == pred["target_item_id"].shape[0] == len(pred["user_ids"])
    ev = json.load(open(wd / "evaluation" / "metrics.json"))
    # The metrics can be recomputed from the saved predictions alone.
    hits = (pred["top50_item_ids"][:, :10] == pred["target_item_id"][:, None]).any(1).mean()
    assert abs(hits - ev["test"]["all"]["recall@10"]) < 1e-9
    # the paper's claims a finished workdir can test (python -m rqsid_jax.claims), the tail one
    # from the evaluation stage's predictions and head tokens
    cl = claims.workdir_claims(str(wd))
    assert [c["claim"] for c in cl] == ["concentration", "tail"]
    assert (cl[1]["head"], cl[1]["tail"]) == pytest.approx((ev["test"]["head"]["recall@10"],
                                                             ev["test"]["tail"]["recall@10"]))
    assert os.listdir(wd / "tensorboard" / "tokenizer")
    # SASRec on the same split, its predictions in the same form, both side by side in the report
    bp = np.load(wd / "baseline" / "predictions_test.npz")
    assert bp.files == pred.files and np.array_equal(bp["user_ids"], pred["user_ids"])
    assert np.array_equal(bp["target_item_id"], pred["target_item_id"])
    base = json.load(open(wd / "baseline" / "metrics.json"))
    b_hits = (bp["top50_item_ids"][:, :10] == bp["target_item_id"][:, None]).any(1).mean()
    assert abs(b_hits - base["test"]["recall@10"]) < 1e-9
    report = open(wd / "report.md").read()
    assert f"| generative retriever (this run) | {ev['test']['all']['recall@5']:.4f} |" in report
    assert f"| SASRec (this run) | {base['test']['recall@5']:.4f} |" in report
    assert "baseline/figures/learning_curve.png" in report
    # The retriever's curve: every validation of the run in history.json, drawn with the loss.
    hist = json.load(open(wd / "retriever" / "history.json"))
    rc = experiment_config("tiny").retriever
    assert [h["step"] for h in hist] == list(range(rc.eval_every, rc.num_steps + 1, rc.eval_every))
    assert (wd / "retriever" / "figures" / "learning_curve.png").stat().st_size > 10_000
    assert "retriever/figures/learning_curve.png" in open(wd / "report.md").read()

    # Killed during retriever training (the finished upstream stages copied over): the rerun
    # resumes from the retriever's checkpoint and ends with the uninterrupted run's results.
    wd2 = tmp_path / "wd2"
    for s in TOKENIZER_STAGES:
        shutil.copytree(wd / s, wd2 / s)
    _kill_at_first_checkpoint(wd2, wd2 / "retriever" / "checkpoints" / "last")
    assert not (wd2 / "retriever" / "stage.json").exists()
    r = subprocess.run(_launch(wd2), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "retriever: resumed from step" in r.stderr  # resumed, not started over
    assert _untimed(json.load(open(wd2 / "retriever" / "history.json"))) == _untimed(hist)
    pred2 = np.load(wd2 / "evaluation" / "predictions_test.npz")
    for k in pred.files:
        np.testing.assert_array_equal(pred2[k], pred[k], err_msg=k)
    ev2 = json.load(open(wd2 / "evaluation" / "metrics.json"))
    assert {k: v for k, v in ev2.items() if "seconds" not in k} == {k: v for k, v in ev.items() if "seconds" not in k}


def _untimed(history):
    return [{k: v for k, v in rec.items() if k != "wall_s"} for rec in history]


TOKENIZER_STAGES = ("data", "embeddings", "tokenizer", "sids", "hourglass")


def test_ablation_table_recomputable_and_resumes_per_variant(tmp_path):
    c = experiment_config("tiny")
    c.stages = TOKENIZER_STAGES + ("ablation",)
    c.retriever.update(num_steps=20, eval_every=0, checkpoint_every=10)
    # a loss variant's plumbing is test_ablation_rejects_unknown_variants' (one retriever fewer here)
    c.ablation.variants = ("baseline", "top@2", "collision_token")
    wd = tmp_path / "wd"
    ab = pipeline.run(c, str(wd), progress=False)["ablation"]
    assert list(ab["variants"]) == ["baseline", "top@2", "collision_token"]
    # TIGER's SIDs beside the collision-free baseline: the tokenizer's codes before reassignment,
    # plus the collision token
    token_sids = load_sid_set(pipeline.Context(c, str(wd), progress=False), "collision_token")
    baseline_sids = np.load(wd / "sids" / "sids.npy")
    assert baseline_sids.shape[1] == 3 and token_sids.shape == (len(baseline_sids), 4)
    assert np.unique(token_sids, axis=0).shape[0] == len(token_sids)
    moved = (token_sids[:, :3] != baseline_sids).any(1)
    assert moved.sum() == json.load(open(wd / "sids" / "metrics.json"))["reassigned_items"] > 0
    assert ab["variants"]["top@2"]["sids"] == "top@2" and ab["variants"]["top@2"]["loss"] == "ce"
    table = open(wd / "ablation" / "table.md").read()
    for v, m in ab["variants"].items():
        assert f"| {v} |" in table
        pred = np.load(wd / "ablation" / v.replace("@", "_at_") / "predictions_test.npz")
        for k in (1, 10, 20):  # every number can be recomputed from the saved predictions
            hits = (pred["top_rows"][:, :k] == pred["target_row"][:, None]).any(1).mean()
            assert abs(hits - m["all"][f"recall@{k}"]) < 1e-9
    assert "Table 2" in open(wd / "report.md").read()
    # the paired section: each variant minus the baseline on the same users, inside its interval
    v = ab["variants"]
    for name in ("top@2", "collision_token"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |") and "[" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell, part in ((cells[1], "all"), (cells[4], "tail")):
            d = v[name][part]["recall@10"] - v["baseline"][part]["recall@10"]
            lo, hi = (float(x) for x in cell.split("[")[1].rstrip("]").split(","))
            assert cell.startswith(f"{d:+.4f} ±") and lo <= d + 1e-12 and d - 1e-12 <= hi, (name, part, cell)
    # one sentence per claim of the paper; the mitigation claim is the paired R@10 difference above
    cl = ab["claims"]
    assert [c["claim"] for c in cl] == ["concentration", "tail", "mitigation"] and cl[2]["variant"] == "top@2"
    assert cl[2]["value"] == pytest.approx(v["top@2"]["all"]["recall@10"] - v["baseline"]["all"]["recall@10"])
    claim_lines = [line for line in table.splitlines() if line.startswith("- ")]
    assert len(claim_lines) == 3 and all(f"**{c['verdict']}**" in l for c, l in zip(cl, claim_lines))
    assert claims.workdir_claims(str(wd)) == cl  # the same claims from the finished workdir
    # A run killed during the last variant: finished variants are kept, the last is redone
    # from its checkpoints and gives the same numbers. A results folder set now (it is not part of
    # the fingerprint) receives every finished variant.
    done = wd / "ablation" / "baseline" / "metrics.json"
    mtime = os.path.getmtime(done)
    os.remove(wd / "ablation" / "stage.json")
    os.remove(wd / "ablation" / "collision_token" / "metrics.json")
    results = tmp_path / "results"
    c.ablation.results_dir = str(results)
    again = pipeline.run(c, str(wd), progress=False)["ablation"]
    assert os.path.getmtime(done) == mtime
    assert again["variants"]["collision_token"]["all"] == ab["variants"]["collision_token"]["all"]
    assert sorted(os.listdir(results)) == sorted(v.replace("@", "_at_") for v in ab["variants"])
    assert all(sorted(os.listdir(results / v)) == ["metrics.json", "ranks.npz"] for v in os.listdir(results))
    # Another machine's workdir (its own upstream stages, no ablation): every variant comes from
    # the results folder, none is trained, and the table and claims are the same.
    wd3 = tmp_path / "wd3"
    for s in TOKENIZER_STAGES:
        shutil.copytree(wd / s, wd3 / s)
    carried = pipeline.run(c, str(wd3), progress=False)["ablation"]
    assert {k: v for k, v in carried.items() if k != "wall_seconds"} == {
        k: v for k, v in again.items() if k != "wall_seconds"}
    assert not list((wd3 / "ablation").glob("*/checkpoints")) and not list((wd3 / "ablation").glob("*/*.npz.tmp"))
    assert open(wd3 / "ablation" / "table.md").read() == open(wd / "ablation" / "table.md").read()
    assert claims.workdir_claims(str(wd3)) == cl
    # Other retriever settings (or SIDs, or data) never mix into that table: one clear error,
    # and the results folder is left as it was.
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    c.retriever.num_steps = 21
    wd4 = tmp_path / "wd4"
    for s in TOKENIZER_STAGES:
        shutil.copytree(wd / s, wd4 / s)
    with pytest.raises(ConfigError, match=r"results/baseline: ablation variant 'baseline' was made with other"):
        pipeline.run(c, str(wd4), progress=False)
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


def test_ablation_rejects_unknown_variants(tmp_path):
    from rqsid_jax.ablation import variant_retriever_config

    c = experiment_config("tiny")
    for bad in ("foo", "top@7", "top@x"):
        with pytest.raises(ConfigError, match=f"ablation.variants=.*: '{bad}' is not"):
            variant_retriever_config(c.retriever, c.ablation, bad, tuple(c.hourglass.top_ks))
    # checked with the rest of the config, before the workdir exists, when the ablation runs
    c.stages = TOKENIZER_STAGES + ("ablation",)
    c.ablation.variants = ("baseline", "top@3")
    with pytest.raises(ConfigError, match=re.escape("ablation.variants=('baseline', 'top@3'): 'top@3' is not")):
        pipeline.run(c, str(tmp_path / "wd"), progress=False)
    assert not (tmp_path / "wd").exists()
    c.stages = TOKENIZER_STAGES  # not run: not checked
    validate_config(c)
    rc = variant_retriever_config(c.retriever, c.ablation, "focal", (2, 4))
    assert (rc.sids, rc.loss, rc.gamma) == ("baseline", "focal", c.ablation.focal_gamma)
    rc = variant_retriever_config(c.retriever, c.ablation, "mile", (2, 4))
    assert (rc.sids, rc.loss, rc.gamma) == ("baseline", "mile", c.ablation.mile_gamma)


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")))
def test_every_experiment_config_is_valid(name):
    """Each configs/*.py passes the launcher's check (for an ablation config: its variants
    against its top_ks); a recipe search's pipeline config likewise."""
    c = experiment_config(name)
    validate_config(c.pipeline if "pipeline" in c else c)


def test_config_change_reruns_only_affected_stages(tmp_path, caplog):
    c = experiment_config("tiny")
    c.stages = TOKENIZER_STAGES
    c.hourglass.run_synthetic = False
    c.data_dir = str(shutil.copytree(ensure_tiny_dataset(), tmp_path / "data"))  # a copy this test may edit
    wd = str(tmp_path / "wd")
    pipeline.run(c, wd, progress=False)
    before, files_before = _mtimes(wd), _file_mtimes(wd)
    pipeline.run(c, wd, progress=False)
    assert _mtimes(wd) == before  # nothing changed, nothing rerun
    assert _file_mtimes(wd) == files_before  # and nothing written: a read-only workdir can be re-checked
    # --reuse_from: another workdir with another hourglass setting copies the stages built for
    # its config (data..sids) from this one, which is only read, and runs its own hourglass stage
    other, src_snapshot = copy.deepcopy(c), _snapshot(wd)
    other.hourglass.top_ks = (3,)
    reuse = tmp_path / "reuse"
    with caplog.at_level(logging.INFO):
        got = pipeline.run(other, str(reuse), progress=False, reuse_from=[str(tmp_path / "absent"), wd])
    assert _snapshot(wd) == src_snapshot
    assert [r.getMessage().split(":")[0] for r in caplog.records if "reused from" in r.getMessage()] == [
        f"stage {s}" for s in ("data", "embeddings", "tokenizer", "sids")]  # not hourglass: other fingerprint
    for s in ("data", "embeddings", "tokenizer", "sids"):  # copied whole, timings included: not rerun
        assert _snapshot(reuse / s) == _snapshot(os.path.join(wd, s)), s
        assert got[s] == json.load(open(os.path.join(wd, s, "metrics.json")))
    assert (reuse / "hourglass" / "sids_top_at_3.npy").exists()
    # a finished stage of another config there is replaced by the source's once copied
    pipeline.run(c, str(reuse), progress=False, reuse_from=[wd])
    assert _snapshot(reuse / "hourglass") == _snapshot(os.path.join(wd, "hourglass"))
    assert not [f for f in os.listdir(reuse) if f.endswith((".next", ".prev", ".reuse"))]
    c.hourglass.top_ks = (3,)
    pipeline.run(c, wd, progress=False)
    after = _mtimes(wd)
    assert all(after[s] == before[s] for s in ("data", "embeddings", "tokenizer", "sids"))
    assert set(after) == set(TOKENIZER_STAGES)
    assert after["hourglass"] != before["hourglass"]
    assert os.path.exists(os.path.join(wd, "hourglass", "sids_top_at_3.npy"))
    assert not os.path.exists(os.path.join(wd, "hourglass", "sids_top_at_2.npy"))  # old run cleared
    # An invalid config stops before the workdir is touched: every file, config.json included,
    # stays byte-identical (it used to empty checkpoints and rewrite config.json first).
    snap = _snapshot(wd)
    for field, value in [("retriever.loss", "bogus"), ("rqvae.codebook_size", 1), ("retriever.num_steps", 0),
                         ("rqvae.num_steps", -5), ("tokenizer", "pq"), ("sid_collisions", "tokens"),
                         ("retriever.dtype", "fp8"), ("evaluation.beam", 0), ("rqvae.optimizer", "sgd"),
                         ("retriever.lr_schedule", "linear"), ("retriever.augment", "windows"),
                         ("retriever.label_smoothing", 1.0), ("retriever.final_lr_fraction", -0.1),
                         ("retriever.max_history", 30), ("baseline.loss", "bpr"), ("baseline.num_epochs", 0),
                         ("baseline.lr_schedule", "step"), ("stages", ("data,baseline",))]:
        bad = copy.deepcopy(c)
        *parents, leaf = field.split(".")
        node = bad
        for p in parents:
            node = node[p]
        node[leaf] = value
        with pytest.raises(ConfigError, match=re.escape(f"{field}={value!r}")):
            pipeline.run(bad, wd, progress=False)
        assert _snapshot(wd) == snap, field
    # A valid-looking config that fails inside a rerun stage (a codebook larger than the
    # catalogue) loses nothing: the new tokenizer is built beside the finished one, which stays.
    big = copy.deepcopy(c)
    big.rqvae.codebook_size = 4096
    with pytest.raises(ConfigError, match="rqvae.codebook_size=4096 exceeds"):
        pipeline.run(big, wd, progress=False)
    now = _snapshot(wd)
    assert all(now.get(k) == v for k, v in snap.items() if k != "config.json")  # every old file as it was
    # new files only in the build beside the stage and in TensorBoard's event files of the attempt
    assert all(k.startswith(("tokenizer.next/", "tensorboard/")) for k in set(now) - set(snap))
    before = _mtimes(wd)
    pipeline.run(c, wd, progress=False)  # still finished for the old config: nothing reruns
    assert _mtimes(wd) == before
    # A changed input file (one user's reviews removed) reruns the data stage and everything
    # after it, and the results reflect the new data; the same bytes again skip everything.
    before = _mtimes(wd)
    users_before = json.load(open(os.path.join(wd, "data", "metrics.json")))["users"]
    reviews = tmp_path / "data" / "reviews_tiny_5.json.gz"
    with gzip.open(reviews, "rt") as f:
        lines = [line for line in f if '"U0000"' not in line]
    with gzip.open(reviews, "wt") as f:
        f.writelines(lines)
    r = pipeline.run(c, wd, progress=False)
    after = _mtimes(wd)
    assert all(after[s] != before[s] for s in TOKENIZER_STAGES)
    assert r["data"]["users"] == users_before - 1
    pipeline.run(c, wd, progress=False)
    assert _mtimes(wd) == after


def _file_mtimes(workdir):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(workdir) for f in files}


def _snapshot(workdir):
    """Every file under workdir -> sha256 of its bytes."""
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_rqkmeans_tokenizer_and_stage_errors(tmp_path):
    c = experiment_config("tiny")
    c.stages = TOKENIZER_STAGES
    c.tokenizer = "rqkmeans"
    c.hourglass.run_synthetic = False
    c.sid_collisions = "reassign"  # collision-free SIDs: 3 tokens, no collision token
    r = pipeline.run(c, str(tmp_path), progress=False)
    s = r["sids"]
    assert s["all_sids_unique"] and s["used_codes"] == [16, 16, 16] and s["sid_tokens"] == 3
    sids, codes = np.load(tmp_path / "sids" / "sids.npy"), np.load(tmp_path / "sids" / "codes.npy")
    np.testing.assert_array_equal(sids, codes)
    assert np.unique(sids, axis=0).shape[0] == len(sids) and s["reassigned_items"] > 0
    # moving items off their nearest last code can only cost reconstruction error
    assert s["reconstruction_mse"] > s["reconstruction_mse_before_reassign"]
    with pytest.raises(ConfigError, match="unknown stages"):
        pipeline.run(c, str(tmp_path / "x"), stages=["nope"], progress=False)
    with pytest.raises(ConfigError, match="needs stage 'embeddings'"):
        pipeline.run(c, str(tmp_path / "y"), stages=["tokenizer"], progress=False)
    c.sid_collisions = "tokens"
    with pytest.raises(ConfigError, match="sid_collisions='tokens'"):
        pipeline.run(c, str(tmp_path), progress=False)


def test_launcher_errors_are_one_line(tmp_path):
    r = subprocess.run(_launch(tmp_path, "--config.data_dir=/nonexistent"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: /nonexistent: no data for 'tiny'")
    (tmp_path / "afile").write_text("")  # a workdir path through a file: an OSError, one line
    r = subprocess.run(_launch(tmp_path / "afile" / "wd"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'afile' / 'wd'}: Not a directory"
    for bad in ("--config.no_such_field=1", "--config.retriever.no_such=2", "--config.rqvae.num_steps=many"):
        r = subprocess.run(_launch(tmp_path, bad), cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and bad.split("=")[0].split(".")[-1] in lines[0]


def test_partial_uses_stopped_upstream_and_records_it(tmp_path):
    c = experiment_config("tiny")
    c.stages = TOKENIZER_STAGES
    wd = str(tmp_path)
    pipeline.run(c, wd, stages=["data", "embeddings"], progress=False)
    os.remove(os.path.join(wd, "embeddings", "stage.json"))  # as if stopped after writing its artifact
    with pytest.raises(ConfigError, match="--partial"):
        pipeline.run(c, wd, stages=["tokenizer"], progress=False)
    r = pipeline.run(c, wd, stages=["tokenizer"], progress=False, partial=True)
    assert r["tokenizer"]["incomplete_upstream"] == ["embeddings"]


def test_user_interactions_and_embeddings_through_the_pipeline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((60, 12)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    lines = [f"u{u},{i},{t}" for u in range(40) for t, i in enumerate(rng.integers(0, 60, 6))]
    (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
    c = experiment_config("tiny")
    c.stages = ("data", "embeddings", "tokenizer", "sids")
    c.data_format = "user"
    c.interactions = str(tmp_path / "inter.csv")
    c.embeddings.npy_path = str(tmp_path / "emb.npy")
    c.rqvae.codebook_size = 8
    pipeline.run(c, str(tmp_path / "wd"), ("data", "embeddings"), progress=False)
    want = pipeline.Context(c, str(tmp_path / "wd")).dataset
    # later stages read the data stage's split and items, never the input files again
    monkeypatch.setattr(context, "load_dataset", lambda *a, **k: pytest.fail("input files re-read"))
    r = pipeline.run(c, str(tmp_path / "wd"), progress=False)
    assert r["data"]["items"] == 60 and r["data"]["users"] == 40
    np.testing.assert_array_equal(np.load(tmp_path / "wd" / "embeddings" / "embeddings.npy"), emb)
    assert r["sids"]["all_sids_unique"]
    ctx = pipeline.Context(c, str(tmp_path / "wd"))
    sp, ref = ctx.split, want.split()
    assert sp.user_ids == ref.user_ids and ctx.items == want.items
    for f in ("user_tokens", "valid_target", "test_target"):
        np.testing.assert_array_equal(getattr(sp, f), getattr(ref, f))
    for f in ("train", "valid_history", "test_history"):
        assert [x.tolist() for x in getattr(sp, f)] == [x.tolist() for x in getattr(ref, f)], f


@pytest.mark.parametrize("next_finished", [True, False])
def test_a_swap_cut_short_by_a_kill_is_completed_or_undone(tmp_path, next_finished):
    d = tmp_path / "tokenizer"
    for name, tag in (("tokenizer.prev", "old"), ("tokenizer.next", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(tag)
    (tmp_path / "tokenizer.prev" / "stage.json").write_text("{}")
    if next_finished:
        (tmp_path / "tokenizer.next" / "stage.json").write_text("{}")
    # killed after the finished stage moved aside, before its replacement moved in
    pipeline._finish_swap(str(d))
    assert (d / "metrics.json").read_text() == ("new" if next_finished else "old")
    assert not (tmp_path / "tokenizer.prev").exists()


def _p5_dir(root, meta_lines):
    d = root / "mini"
    d.mkdir(parents=True)
    (d / "sequential_data.txt").write_text("".join(f"{u} 1 2 3 4\n" for u in range(1, 6)))
    (d / "datamaps.json").write_text(json.dumps({"id2item": {str(i): f"A{i}" for i in range(1, 5)}}))
    (d / "item_meta.jsonl").write_text("".join(line + "\n" for line in meta_lines))
    return root


BAD_INPUTS = {
    # name: (files to write, extra flags, what the one error line must name)
    "meta record not an object": ("p5", ['{"item_id": 1, "title": "a"}', "[1, 2]"], r"item_meta.jsonl: .*first bad line 2 \(ValueError: not a JSON object"),
    "meta record without item_id": ("p5", ['{"item_id": 1}', '{"title": "x"}'], r"item_meta.jsonl: .*first bad line 2 \(ValueError: no 'item_id'"),
    "meta non-integer item_id": ("p5", ['{"item_id": "one"}', '{"item_id": 2}'], r"item_meta.jsonl: .*first bad line 1 \(ValueError: invalid literal"),
    "npy of strings": ("npy", np.array([["a", "b"]] * 4), r"e.npy: .*(numeric|not a plain)"),
    "npy with three dimensions": ("npy", np.zeros((4, 2, 2), np.float32), r"e.npy: expected a numeric \[items, dim\] array, got shape \(4, 2, 2\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_through_the_launcher(tmp_path, case):
    kind, content, names = BAD_INPUTS[case]
    if kind == "p5":
        data = _p5_dir(tmp_path / "data", content)
        flags = [f"--config.data_dir={data}", "--config.dataset=mini", "--config.data_format=p5"]
    else:
        np.save(tmp_path / "e.npy", content)
        (tmp_path / "i.csv").write_text("".join(f"u{u},{i}\n" for u in range(3) for i in range(4)))
        flags = ["--config.data_format=user", f"--config.interactions={tmp_path / 'i.csv'}",
                 f"--config.embeddings.npy_path={tmp_path / 'e.npy'}"]
    r = subprocess.run(_launch(tmp_path / "wd", "--stages=data", *flags), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(names, last), last
    assert not (tmp_path / "wd" / "data" / "stage.json").exists()


def _review_time(line, value):
    rec = json.loads(line)
    rec["unixReviewTime"] = value
    return json.dumps(rec)


def _gz(lines):
    return gzip.compress("".join(line + "\n" for line in lines).encode())


RAW = "reviews_tiny_5.json.gz"
# name: (reviews file bytes from the tiny data's lines, meta file bytes, exit code, what the
# last stderr line must say). Exit 0: skipping is right, and one warning line says what was skipped.
BAD_RAW = {
    "review lines without unixReviewTime": (
        lambda r: _gz(json.dumps({k: v for k, v in json.loads(x).items() if k != "unixReviewTime"}) for x in r),
        None, 1, rf"{RAW}: 3371 of 3371 lines are malformed .*first bad line 1 \(KeyError: 'unixReviewTime'"),
    "one review with a non-integer time": (
        lambda r: _gz([*r[:4], _review_time(r[4], "soon"), *r[5:]]), None, 0,
        rf"{RAW}: skipped 1 of 3371 malformed lines; first bad line 5 \(ValueError"),
    "a tenth of the review lines not JSON": (
        lambda r: _gz("{bad" if i % 10 == 0 else x for i, x in enumerate(r)), None, 1,
        rf"{RAW}: 338 of 3371 lines are malformed \(10.0% > 1%\); first bad line 1 \(JSONDecodeError"),
    "reviews not gzip": (lambda r: b"plain text, not gzip\n", None, 1, rf"{RAW}: truncated or corrupt compressed file"),
    "reviews cut in half": (lambda r: _gz(r)[: len(_gz(r)) // 2], None, 1,
                            rf"{RAW}: truncated or corrupt compressed file after line \d+"),
    "reviews empty": (lambda r: _gz([]), None, 1, rf"{RAW}: no user has 5 or more interactions"),
    "meta lines that are code": (
        None, lambda m: _gz("__import__('os').system('touch pwned')" for _ in m), 1,
        r"meta_tiny.json.gz: 200 of 200 lines are malformed .*first bad line 1 \(ValueError"),
    "meta lines that are lists": (None, lambda m: _gz("[1, 2]" for _ in m), 1,
                                  r"meta_tiny.json.gz: .*not a metadata record with an 'asin'"),
}


@pytest.mark.parametrize("case", sorted(BAD_RAW))
def test_bad_raw_input_is_one_line_through_the_launcher(tmp_path, case):
    make_reviews, make_meta, code, says = BAD_RAW[case]
    src = ensure_tiny_dataset()
    data = tmp_path / "raw"
    data.mkdir()
    for name, make in ((RAW, make_reviews), ("meta_tiny.json.gz", make_meta)):
        raw = open(os.path.join(src, name), "rb").read()
        lines = gzip.decompress(raw).decode().splitlines()
        (data / name).write_bytes(make(lines) if make else raw)
    r = subprocess.run(_launch(tmp_path / "wd", "--stages=data", f"--config.data_dir={data}", "--config.dataset=tiny",
                               "--config.data_format=raw"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == code, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(os.path.join(ROOT, "pwned"))  # literal_eval never runs code
    if code:
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and re.search(says, last), last
        assert not (tmp_path / "wd" / "data" / "stage.json").exists()
    else:
        warned = [line for line in r.stderr.splitlines() if re.search(says, line)]
        assert len(warned) == 1, r.stderr[-1500:]
        assert (tmp_path / "wd" / "data" / "stage.json").exists()


def _tmpfs(path, size):
    """Mounts a tmpfs of `size` at path; skips where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")


def test_full_disk_and_read_only_workdir_are_one_line(tmp_path):
    full = tmp_path / "full"
    _tmpfs(full, "600k")  # room for the data and embeddings, not for the RQ-VAE's checkpoints
    try:
        r = subprocess.run(_launch(full / "wd"), cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
        last = r.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"error: .*/tokenizer/checkpoints: checkpoint of step \d+ not written "
                            r"\(No space left on device\)", last), last
        assert len([x for x in r.stderr.splitlines() if not x.startswith(("I", "W"))]) == 1, r.stderr[-1500:]
        assert (full / "wd" / "embeddings" / "stage.json").exists()  # finished stages kept
    finally:
        subprocess.run(["umount", str(full)])
    ro = tmp_path / "ro"
    _tmpfs(ro, "50m")
    try:
        r = subprocess.run(_launch(ro / "wd", "--stages=data,embeddings"), cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-1500:]
        before = _snapshot(ro / "wd")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        # a finished workdir on a read-only disk can be re-checked: it is only read
        r = subprocess.run(_launch(ro / "wd", "--stages=data,embeddings"), cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-1500:]
        # a stage that must write fails with one line naming the path
        r = subprocess.run(_launch(ro / "wd", "--stages=data,embeddings,tokenizer"), cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
        last = r.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"error: .*/wd/tokenizer.*: Read-only file system", last), last
        assert _snapshot(ro / "wd") == before
    finally:
        subprocess.run(["umount", str(ro)])


SHORT = ["--config.rqvae.num_steps=20", "--config.rqvae.checkpoint_every=10", "--config.retriever.num_steps=20",
         "--config.retriever.eval_every=10", "--config.retriever.checkpoint_every=10", "--config.baseline.num_epochs=2",
         "--config.evaluation.invalid_users=0", "--config.evaluation.given_layer1_users=0",
         # Bit-for-bit across process layouts holds for float32 kernels. On a CPU with AVX512-BF16,
         # 'auto' picks bfloat16 dots, and 2 processes x 4 devices then gave 5.8% other top-50
         # entries than 1 x 8 (measured): those kernels do not promise one summation order across
         # layouts. bfloat16 against float32 is tested in test_precision.py.
         "--config.retriever.dtype=float32", "--config.baseline.dtype=float32"]


def test_two_processes_write_once_and_match_one_process(tmp_path):
    """jax.distributed on localhost: 2 processes x 4 CPU devices into one workdir. Process 1
    runs with umask 077, so anything it created is unreadable to others: only orbax's own
    per-process checkpoint shards may be. SIDs and retriever results equal one process with 8
    devices bit for bit; SASRec's up to float rounding."""
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
           "TMPDIR": str(tmp_path)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # two processes writing one cache entry
    wd = tmp_path / "multi"
    procs = [subprocess.Popen(["bash", "-c", f"umask {mask}; exec \"$@\"", "-", *_launch(wd, *SHORT)], cwd=ROOT,
                              env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
             for i, mask in ((0, "022"), (1, "077"))]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-1500:] + errs[1][-1500:]
    private = [os.path.relpath(os.path.join(r, f), wd) for r, ds, fs in os.walk(wd) for f in ds + fs
               if not os.stat(os.path.join(r, f)).st_mode & 0o004]
    assert private and all("process_1" in p for p in private), private[:10]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("rqsid_process")]  # scratch removed
    single = tmp_path / "single"
    r = subprocess.run(_launch(single, *SHORT), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    for f in ("sids/codes.npy", "sids/sids.npy"):
        np.testing.assert_array_equal(np.load(wd / f), np.load(single / f), err_msg=f)
    a, b = np.load(wd / "evaluation/predictions_test.npz"), np.load(single / "evaluation/predictions_test.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    a, b = (json.load(open(w / "evaluation" / "metrics.json")) for w in (wd, single))
    assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}
    # SASRec's gradients are summed across processes by gloo, in another order than one
    # process's all-reduce: float rounding may swap near-tied items deep in a ranking
    a, b = np.load(wd / "baseline/predictions_test.npz"), np.load(single / "baseline/predictions_test.npz")
    assert (a["top50_rows"] == b["top50_rows"]).all(1).mean() >= 0.99
    a, b = (json.load(open(w / "baseline" / "metrics.json"))["test"] for w in (wd, single))
    assert all(abs(a[k] - b[k]) <= 0.005 for k in a), (a, b)
