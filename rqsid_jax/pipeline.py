"""The whole pipeline as stages over a workdir.

Each stage writes `<workdir>/<stage>/` with its artifacts and `metrics.json`, then
`stage.json` (its config fingerprint) last. A stage whose `stage.json` matches the current
fingerprint is skipped; a changed config (of the stage or anything upstream) reruns it and
everything after it. A killed stage resumes from what it left (RQ-VAE checkpoints, cached
embeddings), so rerunning the same command finishes the job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rqsid_jax import ablation, sharding
from rqsid_jax import workdir as artifacts  # (run()'s `workdir` argument is a path)
from rqsid_jax.baseline import stage as baseline_stage
from rqsid_jax.config_check import validate_config
from rqsid_jax.data import load_dataset
from rqsid_jax.data.embeddings import item_embeddings
from rqsid_jax.data.readers import input_files
from rqsid_jax.errors import ConfigError
from rqsid_jax.inputs import signatures
from rqsid_jax.stages import STAGE_KEYS, STAGES, UPSTREAM


def _jsonable(v):
    if isinstance(v, ml_collections.ConfigDict):
        return {k: _jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def write_json(path: str, obj) -> None:
    """Writes obj as indented JSON (numpy values converted)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)  # atomic: a kill never leaves half a file


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """get_config() of an experiment file (configs/*.py), as the launcher's --config does."""
    import importlib.util

    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class Context:
    """Shared state of one pipeline run: config, workdir, mesh, lazily loaded data."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, progress: bool = True):
        self.config = config
        self.workdir = workdir
        self.progress = progress
        self.is_main = jax.process_index() == 0  # only process 0 writes reports
        self.mesh = sharding.data_mesh()
        self._dataset = self._split = self._items = None
        self.fingerprints: dict[str, str] = {}
        self.building: dict[str, str] = {}  # stage -> directory its replacement is built in
        self.scratch: Optional[str] = None  # processes other than 0: where their copies go

    def dir(self, stage: str) -> str:
        """Where `stage` reads and writes: <workdir>/<stage>, or its build beside a finished one.
        On a process other than 0 (multi-host), a stage being built writes to a private scratch
        copy instead: every process computes the same artifacts, only process 0 keeps them."""
        if stage in self.building and not self.is_main:
            return os.path.join(self._scratch(), stage)
        return self.building.get(stage) or os.path.join(self.workdir, stage)

    def shared(self, stage: str) -> str:
        """The stage's folder as process 0 writes it, for every process: what a process decides
        from it (e.g. a part already done) is the same everywhere."""
        return self.building.get(stage) or os.path.join(self.workdir, stage)

    def checkpoints(self, stage: str, *sub: str) -> str:
        """The stage's orbax checkpoints: one folder shared by every process (orbax writes them
        cooperatively, each process its own shards, process 0 the metadata)."""
        return os.path.join(self.shared(stage), *sub, "checkpoints")

    def _scratch(self) -> str:
        if self.scratch is None:
            self.scratch = tempfile.mkdtemp(prefix=f"rqsid_process{jax.process_index()}_")
        return self.scratch

    def sync(self, name: str) -> None:
        """Every process waits here (multi-host), e.g. until process 0 has written a stage."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)

    @property
    def dataset(self):
        """The dataset parsed from the input files (the data and embeddings stages need it)."""
        if self._dataset is None:
            c = self.config
            # The user's own form is an interactions file plus its item embeddings (.npy).
            self._dataset = load_dataset(c.dataset, c.data_dir, c.data_format, c.interactions,
                                         c.embeddings.npy_path if c.interactions else "", c.min_count)
        return self._dataset

    @property
    def split(self):
        """The leave-one-out split: the data stage's saved one once that stage is done."""
        if self._split is None:
            if self.is_done("data"):
                self._split = artifacts.load_split(self.dir("data"))
            if self._split is None:
                self._split = self.dataset.split()
        return self._split

    @property
    def items(self):
        """The item table: the data stage's saved one once that stage is done."""
        if self._items is None:
            if self.is_done("data"):
                self._items = artifacts.load_items(self.dir("data"))
            if self._items is None:
                self._items = self.dataset.items
        return self._items

    def input_files(self, stage: str) -> list[str]:
        """The user's files `stage` reads (their contents enter its fingerprint)."""
        c = self.config
        if stage == "data":
            return input_files(c.dataset, c.data_dir, c.data_format, c.interactions,
                               c.embeddings.npy_path if c.interactions else "")
        if stage == "embeddings" and c.embeddings.method in ("npy", "auto") and c.embeddings.npy_path:
            return [c.embeddings.npy_path]
        return []

    def fingerprint(self, stage: str) -> str:
        """Hash of the stage's config sections, its upstream fingerprints and its input files."""
        if stage not in self.fingerprints:
            part = {k: _jsonable(self.config.get(k)) for k in STAGE_KEYS[stage]}
            part["upstream"] = [self.fingerprint(u) for u in UPSTREAM[stage]]
            files = self.input_files(stage)
            if files:  # a changed input file reruns this stage and everything after it
                part["inputs"] = signatures(files)
            self.fingerprints[stage] = hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
        return self.fingerprints[stage]

    def is_done(self, stage: str) -> bool:
        """Whether the stage finished with the current fingerprint."""
        path = os.path.join(self.dir(stage), "stage.json")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            return json.load(f).get("fingerprint") == self.fingerprint(stage)


# ------------------------------------------------------------------ stages

def stage_data(ctx: Context) -> dict:
    """Reads the input files once; saves the split and item table (workdir.py) and their counts."""
    ds, sp = ctx.dataset, ctx.split
    d = ctx.dir("data")
    if ctx.is_main:
        artifacts.save_items(d, ds.items)
        artifacts.save_split(d, sp)
    return {**ds.stats(), "test_targets": int(len(sp.test_target)), "valid_targets": int(len(sp.valid_target)),
            "train_interactions": int(sum(len(t) for t in sp.train))}


def stage_embeddings(ctx: Context) -> dict:
    """Item embeddings [N, D] (text, .npy, given or collaborative), cached by their inputs."""
    c = ctx.config.embeddings
    t = time.time()
    emb = item_embeddings(ctx.dataset, ctx.split, c.method, ctx.dir("embeddings"), c.model_name, c.npy_path,
                          c.dim, ctx.config.seed, c.text_fields)
    return {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "seconds": time.time() - t}


def load_embeddings(ctx: Context) -> np.ndarray:
    """The embeddings stage's [N, D] float32 array."""
    return np.load(os.path.join(ctx.dir("embeddings"), "embeddings.npy"), allow_pickle=False)


def stage_tokenizer(ctx: Context) -> dict:
    """Trains the RQ-VAE (checkpointed, resumable) or fits RQ-KMeans codebooks."""
    from rqsid_jax.quantization.kmeans import rq_kmeans
    from rqsid_jax.quantization.train import train_rqvae

    emb = load_embeddings(ctx)
    c = ctx.config
    d = ctx.dir("tokenizer")
    t = time.time()
    if c.tokenizer == "rqvae":
        writer = _tb_writer(ctx, "tokenizer")

        def log(m):
            if writer is not None:
                for k in ("loss", "recon", "codebook", "commitment"):
                    writer.add_scalar(f"rqvae/{k}", m[k], m["step"])
                for l, p in enumerate(m["perplexity"]):
                    writer.add_scalar(f"rqvae/perplexity_level{l + 1}", p, m["step"])
                    writer.add_scalar(f"rqvae/usage_level{l + 1}", m["usage_fraction"][l], m["step"])
                writer.flush()

        _, history = train_rqvae(c.rqvae, emb, ctx.checkpoints("tokenizer"), ctx.mesh, log=log,
                                 progress=ctx.progress)
        write_json(os.path.join(d, "history.json"), history)
        last = history[-1] if history else {}
        return {"tokenizer": "rqvae", "seconds": time.time() - t, **{k: last.get(k) for k in (
            "step", "loss", "recon", "used_codes", "perplexity", "collapsed_levels")}}
    if c.tokenizer == "rqkmeans":
        k = c.rqkmeans
        x = standardize(emb)
        books = np.asarray(rq_kmeans(jax.random.key(c.seed), x, k.levels, k.codebook_size, k.iters))
        np.save(os.path.join(d, "codebooks.npy"), books)
        return {"tokenizer": "rqkmeans", "seconds": time.time() - t}
    raise ConfigError(f"tokenizer='{c.tokenizer}' is not 'rqvae' or 'rqkmeans'")


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-dimension zero mean, unit variance (RQ-KMeans input)."""
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


def tokenizer_encoder(ctx: Context, emb: np.ndarray) -> tuple[Callable, int, Callable]:
    """(codes_fn, codebook_size, latents_fn) for the tokenizer trained on embeddings `emb`."""
    from rqsid_jax.quantization.kernels import residual_encode
    from rqsid_jax.quantization.train import load_rqvae

    c = ctx.config
    if c.tokenizer == "rqvae":
        model = load_rqvae(c.rqvae, emb.shape[1], ctx.checkpoints("tokenizer"))
        books = model.codebooks[...]
        return jax.jit(model.codes), c.rqvae.codebook_size, lambda x: (books, jax.jit(model.encode)(x))
    books = np.load(os.path.join(ctx.dir("tokenizer"), "codebooks.npy"))
    mean, std = emb.mean(0), np.maximum(emb.std(0), 1e-6)
    enc = jax.jit(lambda x: residual_encode(books, (x - mean) / std)[0])
    return enc, c.rqkmeans.codebook_size, lambda x: (books, (x - mean) / std)


def stage_sids(ctx: Context) -> dict:
    """Encodes every item to codes, then SIDs (collision token or collision-free last level)."""
    from rqsid_jax.quantization.kernels import residual_encode
    from rqsid_jax.sid.assign import collision_free_codes, save_sids, sid_report

    mode = ctx.config.get("sid_collisions", "token")
    emb = load_embeddings(ctx)
    enc, M, latents = tokenizer_encoder(ctx, emb)
    x, n = sharding.pad_to_multiple(emb, ctx.mesh.size)
    codes = sharding.to_host(enc(sharding.shard_batch(x, ctx.mesh)))[:n]
    books, z = latents(emb)
    _, residuals, q = residual_encode(books, z)
    z, q, books, residuals = (np.asarray(a) for a in (z, q, books, residuals))
    extra = {"sid_collisions": mode}
    if mode == "reassign":
        last = residuals[-1]  # each item's input to the last level: cost of every last code
        cost = (last ** 2).sum(1)[:, None] - 2 * last @ books[-1].T + (books[-1] ** 2).sum(1)[None]
        new = collision_free_codes(codes, cost)
        q_new = sum(books[level][new[:, level]] for level in range(new.shape[1]))
        extra.update(reassigned_items=int((new != codes).any(1).sum()),
                     reconstruction_mse_before_reassign=float(np.mean((z - q) ** 2)))
        codes, q = new, q_new
    d = ctx.dir("sids")
    np.save(os.path.join(d, "residuals.npy"), residuals)
    items = ctx.items
    sids = save_sids(d, codes, items.ids, items.asins, items.titles, collision_token_always=(mode == "token"))
    return {**sid_report(codes, M, recon_mse=float(np.mean((z - q) ** 2))), **extra,
            "sid_tokens": int(sids.shape[1])}


def stage_hourglass(ctx: Context) -> dict:
    """The hourglass analysis of the codes, its figures and the mitigations' SID sets."""
    from rqsid_jax.sid.report import write_report

    c = ctx.config.hourglass
    d = ctx.dir("sids")
    codes = np.load(os.path.join(d, "codes.npy"))
    residuals = np.load(os.path.join(d, "residuals.npy"))
    M = ctx.config.rqvae.codebook_size if ctx.config.tokenizer == "rqvae" else ctx.config.rqkmeans.codebook_size
    m = write_report(ctx.dir("hourglass"), codes, M, residuals, tuple(c.top_ks), c.head_share,
                     c.synthetic.to_dict() if c.run_synthetic else None,
                     title=f"Hourglass analysis: {ctx.config.dataset}")
    b = m["baseline"]
    return {"hourglass": b["hourglass"], "layers": b["layers"], "paths": b["paths"],
            "mitigations": [{k: v for k, v in x.items() if k != "layers"} for x in m["mitigations"]],
            "synthetic_hourglass": {k: m["synthetic"][k]["hourglass"] for k in ("uniform", "long_tailed")}
            if m["synthetic"] else None}


def retriever_sids(ctx: Context, name: Optional[str] = None) -> np.ndarray:
    """A retriever's SID set (default: retriever.sids): 'baseline' or a mitigation saved by the
    hourglass stage."""
    name = name or ctx.config.retriever.sids
    if name == "baseline":
        return np.load(os.path.join(ctx.dir("sids"), "sids.npy"))
    from rqsid_jax.sid.mitigations import file_name

    path = os.path.join(ctx.dir("hourglass"), f"sids_{file_name(name)}.npy")
    if not os.path.exists(path):
        raise ConfigError(f"retriever.sids='{name}': no {path}; add it to hourglass.top_ks or pick another set")
    return np.load(path)


def stage_retriever(ctx: Context) -> dict:
    """Trains the generative retriever on the chosen SID set, with its validation curve."""
    from rqsid_jax.retrieval import curves, precision
    from rqsid_jax.retrieval.train import train_retriever

    d = ctx.dir("retriever")
    writer = _tb_writer(ctx, "retriever")
    log_path = os.path.join(d, "log.jsonl")  # appended across resumes: the whole curve survives a kill

    def log(m):
        if writer is not None:
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(f"retriever/{k}", v, m["step"])
            writer.flush()
        if ctx.is_main:
            curves.append(log_path, m)

    train_retriever(ctx.config.retriever, retriever_sids(ctx), ctx.split, ctx.checkpoints("retriever"),
                    ctx.mesh, log=log, progress=ctx.progress)
    train, history = curves.read(log_path)
    rc = ctx.config.retriever
    out = {"dtype": precision.resolve(rc.dtype), "encoder_input": rc.encoder_input,  # as trained here
           "evaluations": len(history), "last_step": max((r["step"] for r in train + history), default=None),
           "best": max(history, key=lambda h: h.get("val_ndcg@10", -1)) if history else {}}
    if ctx.is_main:
        write_json(os.path.join(d, "history.json"), history)
        if train or history:
            curves.learning_curve_figure(train, history, os.path.join(d, "figures", "learning_curve.png"),
                                         f"retriever on {ctx.config.dataset} (SIDs: {ctx.config.retriever.sids})")
    return out


def stage_evaluation(ctx: Context) -> dict:
    """Test metrics of the best retriever checkpoint, head/tail, probes, predictions file."""
    from rqsid_jax import checkpointing
    from rqsid_jax.retrieval import evaluate
    from rqsid_jax.retrieval.data import eval_examples
    from rqsid_jax.retrieval.metrics import KS, recall_ndcg
    from rqsid_jax.retrieval.train import build

    c = ctx.config.evaluation
    rc = ctx.config.retriever
    r, params = build(rc, retriever_sids(ctx), rc.seed)
    params, step = checkpointing.restore(
        checkpointing.manager(os.path.join(ctx.checkpoints("retriever"), "best"), max_to_keep=1), params)
    if step is None:
        raise ConfigError(f"{ctx.dir('retriever')}: no best retriever checkpoint")
    codes = np.load(os.path.join(ctx.dir("sids"), "codes.npy"))
    head = np.load(os.path.join(ctx.dir("hourglass"), "head_tokens_layer2.npy"))
    out = {"checkpoint_step": int(step)}
    d = ctx.dir("evaluation")
    items = ctx.items
    for which in c.splits:
        ex = eval_examples(ctx.split, r.vocab, which, rc.max_history)
        res = evaluate.evaluate(r, params, ex, c.beam, head_tokens=head, layer2_codes=codes[:, 1],
                                batch_size=c.batch_size, progress=ctx.progress)
        out[which] = {"all": res["metrics"], "head": res["head"], "tail": res["tail"]}
        if which == "test":
            evaluate.save_test_predictions(os.path.join(d, "predictions_test.npz"), ctx.split, items.ids,
                                           res["predictions"], ex.target)
            if c.given_layer1_users:  # the first users of the test split, a fixed subset
                sub = ex.subset(np.arange(min(c.given_layer1_users, len(ex))))
                g = evaluate.evaluate(r, params, sub, c.beam, given_first=True, batch_size=c.batch_size,
                                      progress=ctx.progress)
                base = recall_ndcg(res["predictions"][: len(sub)], sub.target, [k for k in KS if k <= c.beam])
                out["test_given_layer1"] = {"given_layer1": g["metrics"], "same_users_baseline": base}
            if c.invalid_users:
                sub = ex.subset(np.arange(min(c.invalid_users, len(ex))))
                out["test_unconstrained_invalid"] = evaluate.invalid_ratio(r, params, sub, c.beam,
                                                                           batch_size=c.batch_size,
                                                                           progress=ctx.progress)
    return out


STAGE_FNS = {"data": stage_data, "embeddings": stage_embeddings, "tokenizer": stage_tokenizer,
             "sids": stage_sids, "hourglass": stage_hourglass, "retriever": stage_retriever,
             "evaluation": stage_evaluation, "baseline": baseline_stage.run, "ablation": ablation.stage_ablation}


def _finish_swap(d: str) -> None:
    """Completes (or undoes) a swap of <stage>.next into <stage> that a kill may have cut short:
    the finished replacement moves in, the previous version is removed only after that."""
    prev, nxt = d + ".prev", d + ".next"
    if not os.path.exists(d) and os.path.exists(prev):
        if os.path.exists(os.path.join(nxt, "stage.json")):
            os.rename(nxt, d)
        else:
            os.rename(prev, d)
    if os.path.exists(d) and os.path.exists(prev):
        shutil.rmtree(prev)


def _tb_writer(ctx: Context, stage: str):
    if not ctx.is_main:
        return None
    from tensorboardX import SummaryWriter  # event files without TensorFlow
    return SummaryWriter(os.path.join(ctx.workdir, "tensorboard", stage))


# ------------------------------------------------------------------ driver

def run(config: ml_collections.ConfigDict, workdir: str, stages: Optional[Sequence[str]] = None,
        progress: bool = True, partial: bool = False) -> dict:
    """Runs `stages` (default: all) in order, skipping finished ones. Returns metrics per stage.

    partial=True lets a stage use an upstream stage that was stopped before it finished (e.g.
    evaluate the best checkpoint of an interrupted training); its metrics record which.
    """
    wanted = list(stages) if stages else [s for s in STAGES if s in config.stages]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; stages are {list(STAGES)}")
    validate_config(config)  # before anything in the workdir is created, changed or removed
    ctx = Context(config, workdir, progress)
    try:
        return _run_stages(ctx, wanted, partial)
    finally:
        if ctx.scratch is not None:  # processes other than 0: their private copies
            shutil.rmtree(ctx.scratch, ignore_errors=True)


def _run_stages(ctx: Context, wanted: list, partial: bool) -> dict:
    config, workdir = ctx.config, ctx.workdir
    if ctx.is_main:  # process 0 alone creates and writes the workdir
        os.makedirs(workdir, exist_ok=True)
        text = json.dumps(_jsonable(config), indent=1)
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path) or open(path).read() != text:  # a finished read-only workdir can be re-checked
            with open(path, "w") as f:
                f.write(text)
    ctx.sync("workdir ready")
    results = {}
    for stage in [s for s in STAGES if s in wanted]:
        incomplete = []
        for up in UPSTREAM[stage]:
            if up not in wanted and not ctx.is_done(up):
                if not partial:
                    raise ConfigError(f"stage '{stage}' needs stage '{up}' to be complete in {workdir} "
                                      f"for this config; include it in --stages (or --partial)")
                logging.warning("stage %s: upstream stage %s is incomplete (--partial)", stage, up)
                incomplete.append(up)
        d = os.path.join(workdir, stage)
        if ctx.is_main:
            _finish_swap(d)
        ctx.sync(f"{stage}: swap finished")
        if ctx.is_done(stage):
            logging.info("stage %s: up to date, skipped", stage)
            with open(os.path.join(d, "metrics.json")) as f:
                results[stage] = json.load(f)
            continue
        # A finished stage of another config or input stays until its replacement is complete:
        # the new run is built beside it in <stage>.next/ (resumable there) and swapped in last.
        build = d + ".next" if os.path.exists(os.path.join(d, "stage.json")) else d
        fp_path = os.path.join(build, "fingerprint")
        if ctx.is_main:  # only process 0 removes, creates and swaps stage folders
            if os.path.exists(fp_path) and open(fp_path).read().strip() != ctx.fingerprint(stage):
                logging.info("stage %s: config changed, starting over in %s", stage, build)
                shutil.rmtree(build)
            os.makedirs(build, exist_ok=True)
            with open(fp_path, "w") as f:
                f.write(ctx.fingerprint(stage))
        ctx.sync(f"{stage}: build folder ready")
        logging.info("stage %s: running", stage)
        t = time.time()
        ctx.building[stage] = build
        try:
            if not ctx.is_main:
                os.makedirs(ctx.dir(stage), exist_ok=True)
            metrics = STAGE_FNS[stage](ctx)
        finally:
            ctx.building.pop(stage)
        metrics["wall_seconds"] = time.time() - t
        if incomplete:
            metrics["incomplete_upstream"] = incomplete
        if ctx.is_main:
            write_json(os.path.join(build, "metrics.json"), metrics)
            write_json(os.path.join(build, "stage.json"), {"fingerprint": ctx.fingerprint(stage), "complete": True})
            if build != d:
                os.rename(d, d + ".prev")
                _finish_swap(d)
        ctx.sync(f"{stage}: written")  # later stages of every process read what process 0 wrote
        results[stage] = metrics
    if ctx.is_main:
        from rqsid_jax.report import write_workdir_report
        write_workdir_report(workdir)
    return results
