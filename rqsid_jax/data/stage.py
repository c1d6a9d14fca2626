"""The data and embeddings stages: read the input files once into the split and item table,
then embed every item (text, .npy, given or collaborative), cached by its inputs."""
from __future__ import annotations

import time

from rqsid_jax import workdir as wd
from rqsid_jax.data.embeddings import item_embeddings


def stage_data(ctx) -> dict:
    """Reads the input files once; saves the split and item table and their counts."""
    ds, sp = ctx.dataset, ctx.split
    d = ctx.dir("data")
    if ctx.is_main:
        wd.save_items(d, ds.items)
        wd.save_split(d, sp)
    return {**ds.stats(), "test_targets": int(len(sp.test_target)), "valid_targets": int(len(sp.valid_target)),
            "train_interactions": int(sum(len(t) for t in sp.train))}


def stage_embeddings(ctx) -> dict:
    """Item embeddings [N, D], cached in the stage folder by their inputs."""
    c = ctx.config.embeddings
    t = time.time()
    emb = item_embeddings(ctx.dataset, ctx.split, c.method, ctx.dir("embeddings"), c.model_name, c.npy_path,
                          c.dim, ctx.config.seed, c.text_fields)
    return {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "seconds": time.time() - t}
