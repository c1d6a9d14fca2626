"""The whole pipeline as stages over a workdir: orchestration only.

Each stage writes `<workdir>/<stage>/` with its artifacts and `metrics.json`, then
`stage.json` (its config fingerprint) last. A stage whose `stage.json` matches the current
fingerprint is skipped; a changed config (of the stage or anything upstream) reruns it and
everything after it. A killed stage resumes from what it left (RQ-VAE checkpoints, cached
embeddings), so rerunning the same command finishes the job. Each stage's body lives beside its
domain (`STAGE_FNS`); the artifacts' names are in workdir.py, the stage graph in stages.py.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Optional, Sequence

import ml_collections

from rqsid_jax import ablation
from rqsid_jax import workdir as wd
from rqsid_jax.baseline import stage as baseline_stage
from rqsid_jax.config_check import load_config_file, validate_config
from rqsid_jax.context import Context, jsonable
from rqsid_jax.data.stage import stage_data, stage_embeddings
from rqsid_jax.errors import ConfigError
from rqsid_jax.quantization import tokenizer
from rqsid_jax.report import write_workdir_report
from rqsid_jax.retrieval.stage import stage_evaluation, stage_retriever
from rqsid_jax.sid.stage import stage_hourglass, stage_sids
from rqsid_jax.stages import STAGES, UPSTREAM

__all__ = ["Context", "STAGES", "STAGE_FNS", "load_config_file", "run"]

STAGE_FNS = {"data": stage_data, "embeddings": stage_embeddings, "tokenizer": tokenizer.stage,
             "sids": stage_sids, "hourglass": stage_hourglass, "retriever": stage_retriever,
             "evaluation": stage_evaluation, "baseline": baseline_stage.run, "ablation": ablation.stage_ablation}


def _finish_swap(d: str) -> None:
    """Completes (or undoes) a swap of <stage>.next into <stage> that a kill may have cut short:
    the finished replacement moves in, the previous version is removed only after that."""
    prev, nxt = d + ".prev", d + ".next"
    if not os.path.exists(d) and os.path.exists(prev):
        if os.path.exists(os.path.join(nxt, wd.STAGE)):
            os.rename(nxt, d)
        else:
            os.rename(prev, d)
    if os.path.exists(d) and os.path.exists(prev):
        shutil.rmtree(prev)


# ------------------------------------------------------------------ driver

def run(config: ml_collections.ConfigDict, workdir: str, stages: Optional[Sequence[str]] = None,
        progress: bool = True, partial: bool = False, reuse_from: Sequence[str] = ()) -> dict:
    """Runs `stages` (default: all) in order, skipping finished ones. Returns metrics per stage.

    partial=True lets a stage use an upstream stage that was stopped before it finished (e.g.
    evaluate the best checkpoint of an interrupted training); its metrics record which.
    reuse_from: other workdirs whose finished stages are copied in where their fingerprint is
    this config's (e.g. an ablation reusing the main run's data..sids); they are only read.
    """
    wanted = list(stages) if stages else [s for s in STAGES if s in config.stages]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; stages are {list(STAGES)}")
    validate_config(config)  # before anything in the workdir is created, changed or removed
    ctx = Context(config, workdir, progress)
    try:
        return _run_stages(ctx, wanted, partial, tuple(reuse_from))
    finally:
        if ctx.scratch is not None:  # processes other than 0: their private copies
            shutil.rmtree(ctx.scratch, ignore_errors=True)


def _reuse(ctx: Context, stage: str, sources: tuple) -> None:
    """Copies `stage` from the first source workdir where it finished for this config's
    fingerprint (so also for the same upstream stages and input files), then swaps it in like a
    finished rebuild: an unfinished build here is superseded, a finished one of another config
    replaced only once the copy is complete."""
    fp = ctx.fingerprint(stage)
    for src in sources:
        done = os.path.join(src, stage, wd.STAGE)
        if os.path.abspath(src) != os.path.abspath(ctx.workdir) and os.path.exists(done) and \
                wd.read_json(done).get("fingerprint") == fp:
            d = os.path.join(ctx.workdir, stage)
            tmp = d + ".reuse"  # renamed only when complete: a killed copy is never taken for a stage
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(os.path.join(src, stage), tmp)
            if os.path.exists(d):
                shutil.rmtree(d + ".next", ignore_errors=True)
                os.rename(tmp, d + ".next")
                os.rename(d, d + ".prev")
                _finish_swap(d)
            else:
                os.rename(tmp, d)
            logging.info("stage %s: reused from %s", stage, src)
            return


def _run_stages(ctx: Context, wanted: list, partial: bool, reuse_from: tuple = ()) -> dict:
    config, workdir = ctx.config, ctx.workdir
    if ctx.is_main:  # process 0 alone creates and writes the workdir
        os.makedirs(workdir, exist_ok=True)
        text = json.dumps(jsonable(config), indent=1)
        path = os.path.join(workdir, wd.CONFIG)
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
            if reuse_from and not ctx.is_done(stage):
                _reuse(ctx, stage, reuse_from)
        ctx.sync(f"{stage}: swap finished")
        if ctx.is_done(stage):
            logging.info("stage %s: up to date, skipped", stage)
            results[stage] = wd.read_json(os.path.join(d, wd.METRICS))
            continue
        # A finished stage of another config or input stays until its replacement is complete:
        # the new run is built beside it in <stage>.next/ (resumable there) and swapped in last.
        build = d + ".next" if os.path.exists(os.path.join(d, wd.STAGE)) else d
        fp_path = os.path.join(build, wd.FINGERPRINT)
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
            wd.write_json(os.path.join(build, wd.METRICS), metrics)
            wd.write_json(os.path.join(build, wd.STAGE), {"fingerprint": ctx.fingerprint(stage), "complete": True})
            if build != d:
                os.rename(d, d + ".prev")
                _finish_swap(d)
        ctx.sync(f"{stage}: written")  # later stages of every process read what process 0 wrote
        results[stage] = metrics
    if ctx.is_main:
        write_workdir_report(workdir)
    return results
