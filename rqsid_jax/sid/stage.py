"""The sids and hourglass stages: every item's codes and unique SIDs, then the hourglass
analysis of those codes with its figures and the mitigations' SID sets."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from rqsid_jax import sharding
from rqsid_jax import workdir as wd
from rqsid_jax.errors import ConfigError
from rqsid_jax.quantization import tokenizer
from rqsid_jax.quantization.kernels import residual_encode
from rqsid_jax.sid.assign import collision_free_codes, save_sids, sid_report, with_collision_token
from rqsid_jax.sid.hourglass_report import write_report


def tokenizer_codes(ctx):
    """(encoder, every item's codes [N, L] as the tokenizer stage's quantizer gives them)."""
    emb = wd.load_embeddings(ctx.dir("embeddings"))
    enc = tokenizer.load_encoder(ctx, emb)
    x, n = sharding.pad_to_multiple(emb, ctx.mesh.size)
    return enc, sharding.to_host(enc.codes(sharding.shard_batch(x, ctx.mesh)))[:n], emb


def stage_sids(ctx) -> dict:
    """Encodes every item to codes, then SIDs (collision token or collision-free last level)."""
    mode = ctx.config.get("sid_collisions", "token")
    enc, codes, emb = tokenizer_codes(ctx)
    books, z = enc.latents(emb)
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
    np.save(os.path.join(d, wd.RESIDUALS), residuals)
    items = ctx.items
    sids = save_sids(d, codes, items.ids, items.asins, items.titles, collision_token_always=(mode == "token"))
    return {**sid_report(codes, enc.codebook_size, recon_mse=float(np.mean((z - q) ** 2))), **extra,
            "sid_tokens": int(sids.shape[1])}


def stage_hourglass(ctx) -> dict:
    """The hourglass analysis of the codes, its figures and the mitigations' SID sets."""
    c = ctx.config.hourglass
    d = ctx.dir("sids")
    m = write_report(ctx.dir("hourglass"), wd.load_codes(d), tokenizer.codebook_size(ctx.config),
                     wd.load_residuals(d), tuple(c.top_ks), c.head_share,
                     c.synthetic.to_dict() if c.run_synthetic else None,
                     title=f"Hourglass analysis: {ctx.config.dataset}")
    b = m["baseline"]
    return {"hourglass": b["hourglass"], "layers": b["layers"], "paths": b["paths"],
            "mitigations": [{k: v for k, v in x.items() if k != "layers"} for x in m["mitigations"]],
            "synthetic_hourglass": {k: m["synthetic"][k]["hourglass"] for k in ("uniform", "long_tailed")}
            if m["synthetic"] else None}


def load_sid_set(ctx, name: Optional[str] = None) -> np.ndarray:
    """A retriever's SID set (default: retriever.sids): 'baseline' (the sids stage's),
    'collision_token' (TIGER's L+1 tokens on the tokenizer's own codes, whatever
    sid_collisions is: the ablation's counterpart of collision-free SIDs) or a mitigation saved
    by the hourglass stage."""
    name = name or ctx.config.retriever.sids
    if name == "baseline":
        return np.load(os.path.join(ctx.dir("sids"), wd.SIDS))
    if name == "collision_token":  # encoded again (seconds): the sids stage keeps reassigned codes only
        return with_collision_token(tokenizer_codes(ctx)[1])
    path = wd.sid_set_path(ctx.dir("hourglass"), name)
    if not os.path.exists(path):
        raise ConfigError(f"retriever.sids='{name}': no {path}; add it to hourglass.top_ks or pick another set")
    return np.load(path)
