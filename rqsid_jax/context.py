"""One pipeline run's shared state: config, workdir folders (multi-host aware), mesh, the data
stage's split and items, stage fingerprints. Stage bodies receive it as `ctx`."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Optional

import jax
import ml_collections

from rqsid_jax import sharding
from rqsid_jax import workdir as wd
from rqsid_jax.data import load_dataset
from rqsid_jax.data.readers import input_files
from rqsid_jax.inputs import signatures
from rqsid_jax.stages import NOT_FINGERPRINTED, STAGE_KEYS, UPSTREAM


def jsonable(v):
    """A ConfigDict (or nested lists of them) as plain JSON values, keys sorted."""
    if isinstance(v, ml_collections.ConfigDict):
        return {k: jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


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
        return os.path.join(self.shared(stage), *sub, wd.CHECKPOINTS)

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

    def _data_artifact(self, attr: str, load, parsed):
        """The data stage's saved artifact once that stage is done (and the file is there), else
        the one parsed from the input files; kept on the context."""
        if getattr(self, attr) is None:
            if self.is_done("data"):
                setattr(self, attr, load(self.dir("data")))
            if getattr(self, attr) is None:
                setattr(self, attr, parsed())
        return getattr(self, attr)

    @property
    def split(self):
        """The leave-one-out split: the data stage's saved one once that stage is done."""
        return self._data_artifact("_split", wd.load_split, lambda: self.dataset.split())

    @property
    def items(self):
        """The item table: the data stage's saved one once that stage is done."""
        return self._data_artifact("_items", wd.load_items, lambda: self.dataset.items)

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
            part = {k: jsonable(self.config.get(k)) for k in STAGE_KEYS[stage]}
            for k, fields in NOT_FINGERPRINTED.items():
                if isinstance(part.get(k), dict):
                    part[k] = {f: v for f, v in part[k].items() if f not in fields}
            part["upstream"] = [self.fingerprint(u) for u in UPSTREAM[stage]]
            files = self.input_files(stage)
            if files:  # a changed input file reruns this stage and everything after it
                part["inputs"] = signatures(files)
            self.fingerprints[stage] = hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
        return self.fingerprints[stage]

    def is_done(self, stage: str) -> bool:
        """Whether the stage finished with the current fingerprint."""
        path = os.path.join(self.dir(stage), wd.STAGE)
        return os.path.exists(path) and wd.read_json(path).get("fingerprint") == self.fingerprint(stage)

    def tb_writer(self, stage: str):
        """A TensorBoard writer for `stage` on process 0 (event files without TensorFlow), else None."""
        if not self.is_main:
            return None
        from tensorboardX import SummaryWriter
        return SummaryWriter(os.path.join(self.workdir, "tensorboard", stage))
