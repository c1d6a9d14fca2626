"""Beam search over SIDs, compiled once per (batch, encoder length), static shapes.

Constrained mode walks the CSR prefix index: at step t every beam scores only the children
of its trie node (at most max_children[t] of them), so memory is O(batch x beam x widest
node), never M^L. Finished beams (leaves) follow a PAD self-loop with score +0.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from rqsid_jax.retrieval.sid_vocab import BOS, PAD, PrefixIndex

NEG_INF = -1e30


@dataclasses.dataclass
class DeviceIndex:
    """The prefix trie as device arrays, for constrained beam search inside jit."""
    start: jax.Array
    count: jax.Array
    child_token: jax.Array
    child_node: jax.Array
    leaf_item: jax.Array
    max_children: tuple
    depth: int

    @classmethod
    def from_index(cls, ix: PrefixIndex) -> "DeviceIndex":
        """The host PrefixIndex copied to the device."""
        return cls(jnp.asarray(ix.start), jnp.asarray(ix.count), jnp.asarray(ix.child_token),
                   jnp.asarray(ix.child_node), jnp.asarray(ix.leaf_item), tuple(int(k) for k in ix.max_children),
                   ix.depth)


def beam_search(model, enc_tokens, index: DeviceIndex, beam: int, constrained: bool = True,
                first_token: Optional[jax.Array] = None):
    """Returns (tokens [B, beam, T], scores [B, beam], items [B, beam]; -1 = invalid/no SID).

    `first_token` [B] forces the first generated token (the paper's given-layer-1 probe).
    """
    B = enc_tokens.shape[0]
    T = index.depth
    memory, mask = model.encode(enc_tokens)
    kv = model.cross_kv(memory)  # per layer, shared by the beams of a query
    # Step 0 decodes one row per query (every beam starts from BOS); the top `beam` first
    # tokens then fan out into `beam` rows. `width` is the number of rows per query.
    width = 1
    tokens = jnp.full((B, 1, T + 1), PAD, jnp.int32).at[:, :, 0].set(BOS)
    scores = jnp.zeros((B, 1))
    node = jnp.zeros((B, 1), jnp.int32)
    b_idx = jnp.arange(B)[:, None]
    cache = model.init_cache(B)
    for t in range(T):
        logits, cache = model.decode_step(tokens[:, :, t].reshape(B * width), t, cache, mask, kv, group=width)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(B, width, -1)
        if constrained:
            K = index.max_children[t]
            st, cnt = index.start[node], index.count[node]
            j = jnp.arange(K)
            pos = jnp.minimum(st[..., None] + j, index.child_token.size - 1)
            valid = (j < cnt[..., None]) & (scores[..., None] > NEG_INF / 2)
            ctok, cnode = index.child_token[pos], index.child_node[pos]
            step = jnp.where(ctok == PAD, 0.0, jnp.take_along_axis(logp, ctok, axis=-1))
        else:
            K = logp.shape[-1]
            ctok = jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (B, width, K))
            cnode = jnp.zeros_like(ctok)
            valid = jnp.broadcast_to(scores[..., None] > NEG_INF / 2, ctok.shape)
            step = logp
        if first_token is not None and t == 0:
            valid = valid & (ctok == first_token[:, None, None])
        cand = jnp.where(valid, scores[..., None] + step, NEG_INF).reshape(B, width * K)
        ctok, cnode = ctok.reshape(B, width * K), cnode.reshape(B, width * K)
        if width * K < beam:  # fewer candidates than beams: pad with dead ones
            pad = ((0, 0), (0, beam - width * K))
            cand = jnp.pad(cand, pad, constant_values=NEG_INF)
            ctok, cnode = jnp.pad(ctok, pad), jnp.pad(cnode, pad)
        top_s, top_i = jax.lax.top_k(cand, beam)
        parent = jnp.minimum(top_i // K, width - 1)
        new_tok = ctok[b_idx, top_i]
        node = cnode[b_idx, top_i]
        tokens = tokens[b_idx, parent].at[:, :, t + 1].set(new_tok)
        # caches follow their beams: row (b, k) continues row parent[b, k] of query b
        rows = (jnp.arange(B)[:, None] * width + parent).reshape(-1)
        cache = [(k[rows], v[rows]) for k, v in cache]
        scores = top_s
        width = beam
    alive = scores > NEG_INF / 2
    items = jnp.where(alive, index.leaf_item[node], -1) if constrained else jnp.full((B, beam), -1)
    return tokens[:, :, 1:], scores, items


@partial(jax.jit, static_argnames=("graphdef", "beam", "constrained", "max_children", "depth"))
def _beam_jit(graphdef, state, enc, start, count, child_token, child_node, leaf_item, first, beam, constrained,
              max_children, depth):
    model = nnx.merge(graphdef, state)
    ix = DeviceIndex(start, count, child_token, child_node, leaf_item, max_children, depth)
    return beam_search(model, enc, ix, beam, constrained, first)


def run_beam(graphdef, state, enc, index: DeviceIndex, beam: int, constrained: bool = True, first=None):
    """Beam search over encoder inputs: (tokens, scores, items) of the top `beam` SIDs."""
    return _beam_jit(graphdef, state, enc, index.start, index.count, index.child_token, index.child_node,
                     index.leaf_item, first, beam, constrained, index.max_children, index.depth)
