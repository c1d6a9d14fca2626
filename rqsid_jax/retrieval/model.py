"""TIGER's encoder-decoder transformer in Flax NNX (pre-LayerNorm, learned positions).

Dropout takes an explicit key per call, so a training step is a pure function of
(params, batch, step key): resume reproduces the same random bits. Every matmul goes through
precision.einsum in ModelConfig.dtype (float32, or bfloat16 operands with float32
accumulation); parameters are float32 in both, so a checkpoint loads in either precision.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from rqsid_jax.retrieval.precision import dense, einsum

NEG = -1e9
BYTES = 4  # 8-bit dropout uniforms per 32-bit random word


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes, dropout, precision and encoder input of the encoder-decoder."""
    vocab_size: int
    d_model: int = 128
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    max_encoder_len: int = 81
    max_decoder_len: int = 6
    # Output logits cover token ids [0, output_size): the SID tokens, which come before the user
    # tokens in the vocabulary (user tokens are never generated). 0 = the whole vocabulary.
    output_size: int = 0
    # Matmul operand dtype (precision.py): "float32" or "bfloat16" (float32 accumulation).
    dtype: str = "float32"
    # "tokens": one encoder position per SID token (TIGER). "items": one position per history
    # item, the sum of its tokens' embeddings plus a learned per-level embedding; the encoder
    # then reads item_width-token slots (after the user token) and is ~item_width x shorter.
    encoder_input: str = "tokens"
    item_width: int = 1


def dropout(x, rate: float, key: Optional[jax.Array]):
    """Inverted dropout whose mask costs a quarter of jax.random.bernoulli's.

    Threefry (partitionable) spends one 2x32 block per requested element, which made dropout
    ~25% of a training step here. Each 32-bit draw is split into four 8-bit uniforms, so the
    drop probability is rounded to a multiple of 1/256 (0.1 -> 26/256 = 0.1016). The draws keep
    the leading (batch) axes, so the mask stays sharded with the activations.
    """
    if key is None or rate == 0.0:
        return x
    *lead, d = x.shape
    words = jax.random.bits(key, (*lead, -(-d // BYTES)), jnp.uint32)
    shifts = jnp.arange(BYTES, dtype=jnp.uint32) * 8
    u8 = ((words[..., None] >> shifts) & 0xFF).reshape(*lead, -1)[..., :d]
    threshold = round(rate * 256)
    keep = u8 >= threshold
    return jnp.where(keep, x * (256.0 / (256 - threshold)), 0.0)


class Attention(nnx.Module):
    """Multi-head attention (self or cross) with head-major projections."""
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        inner = cfg.num_heads * cfg.head_dim
        self.h, self.dh, self.dtype = cfg.num_heads, cfg.head_dim, cfg.dtype
        self.q = nnx.Linear(cfg.d_model, inner, use_bias=False, rngs=rngs)
        self.kv = nnx.Linear(cfg.d_model, 2 * inner, use_bias=False, rngs=rngs)
        self.o = nnx.Linear(inner, cfg.d_model, use_bias=False, rngs=rngs)

    def keys_values(self, ctx):
        """Keys/values position-major [B, S, h, dh]: the layout of the decoding cache."""
        b, s, _ = ctx.shape
        kv = dense(self.kv, ctx, self.dtype).reshape(b, s, 2, self.h, self.dh)
        return kv[:, :, 0], kv[:, :, 1]

    def _heads(self, x, proj: nnx.Linear, n: int):
        """x [B, T, d] projected straight into n head-major tensors [B, h, T, dh]. The same
        kernel as proj(x) read as [d, n, h, dh]: XLA then needs no transpose between the
        projection and the per-head matmuls (bench/retriever_train.py: 7-9% faster steps). One
        product per tensor (keys, values): no slicing copy of a joint [n, ...] result."""
        w = proj.kernel[...].reshape(x.shape[-1], n, self.h, self.dh)
        return [einsum("btm,mhd->bhtd", x, w[:, i], self.dtype) for i in range(n)]

    def memory_kv(self, memory):
        """Cross-attention keys/values, head-major [B, h, S, dh]: computed once per query, then
        read by every decoding step."""
        return tuple(self._heads(memory, self.kv, 2))

    def __call__(self, x, mask, kv=None):
        """Self-attention over x [B, T, d], or cross-attention on head-major memory kv;
        mask broadcastable to [B, 1, T, S] (True = attend)."""
        q = self._heads(x, self.q, 1)[0] / jnp.sqrt(self.dh).astype(x.dtype)
        k, v = self._heads(x, self.kv, 2) if kv is None else kv
        w = self._weights(einsum("bhtd,bhsd->bhts", q, k, self.dtype), mask)
        out = einsum("bhts,bhsd->bhtd", w, v, self.dtype)
        return einsum("bhtd,hdm->btm", out, self.o.kernel[...].reshape(self.h, self.dh, -1), self.dtype)

    def step(self, x, cache, t: int):
        """One new position t with a self-attention cache (k, v) [B, t, h, dh] of the earlier
        positions; returns (out, cache of t + 1 positions). With one query and at most a few
        keys, products and sums beat batched matmuls (no transposes, one fused loop)."""
        b = x.shape[0]
        q = dense(self.q, x, self.dtype).reshape(b, self.h, self.dh) / jnp.sqrt(self.dh).astype(x.dtype)
        k_new, v_new = self.keys_values(x)
        k = jnp.concatenate([cache[0], k_new], axis=1) if t else k_new
        v = jnp.concatenate([cache[1], v_new], axis=1) if t else v_new
        w = jax.nn.softmax(jnp.sum(q[:, None] * k, axis=-1), axis=1)  # [B, t + 1, h]
        out = jnp.sum(w[..., None] * v, axis=1)
        return dense(self.o, out.reshape(b, 1, self.h * self.dh), self.dtype), (k, v)

    @staticmethod
    def _weights(logits, mask):
        return jax.nn.softmax(jnp.where(mask, logits, NEG), axis=-1)


class MLP(nnx.Module):
    """ReLU feed-forward block with dropout inside."""
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.up = nnx.Linear(cfg.d_model, cfg.mlp_dim, rngs=rngs)
        self.down = nnx.Linear(cfg.mlp_dim, cfg.d_model, rngs=rngs)
        self.dtype = cfg.dtype

    def __call__(self, x, rate, key):
        return dense(self.down, dropout(jax.nn.relu(dense(self.up, x, self.dtype)), rate, key), self.dtype)


class EncoderLayer(nnx.Module):
    """Pre-LayerNorm self-attention + MLP block."""
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs), nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn, self.mlp = Attention(cfg, rngs), MLP(cfg, rngs)
        self.rate = cfg.dropout

    def __call__(self, x, mask, key):
        k = jax.random.split(key, 3) if key is not None else [None] * 3
        x = x + dropout(self.attn(self.ln1(x), mask), self.rate, k[0])
        return x + dropout(self.mlp(self.ln2(x), self.rate, k[1]), self.rate, k[2])


class DecoderLayer(nnx.Module):
    """Pre-LayerNorm causal self-attention, cross-attention and MLP block."""
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.ln1, self.ln2, self.ln3 = (nnx.LayerNorm(cfg.d_model, rngs=rngs) for _ in range(3))
        self.self_attn, self.cross_attn, self.mlp = Attention(cfg, rngs), Attention(cfg, rngs), MLP(cfg, rngs)
        self.rate = cfg.dropout

    def __call__(self, y, self_mask, cross_mask, cross_kv, key):
        k = jax.random.split(key, 4) if key is not None else [None] * 4
        y = y + dropout(self.self_attn(self.ln1(y), self_mask), self.rate, k[0])
        y = y + dropout(self.cross_attn(self.ln2(y), cross_mask, kv=cross_kv), self.rate, k[1])
        return y + dropout(self.mlp(self.ln3(y), self.rate, k[2]), self.rate, k[3])


def _decoder_layer_step(layer, y, cache, t, cross_mask, cross_kv, group):
    a, cache = layer.self_attn.step(layer.ln1(y), cache, t)
    y = y + a
    # The `group` beams of one query share its memory: they are the query axis of a single
    # cross-attention, so the memory is never copied per beam.
    n, _, d = y.shape
    c = layer.cross_attn(layer.ln2(y).reshape(n // group, group, d), cross_mask, kv=cross_kv)
    y = y + c.reshape(n, 1, d)
    return y + layer.mlp(layer.ln3(y), 0.0, None), cache


class Seq2Seq(nnx.Module):
    """TIGER's encoder-decoder over SID tokens (training forward and cached decoding)."""
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, rngs=rngs)
        self.enc_pos = nnx.Param(init(rngs.params(), (cfg.max_encoder_len, cfg.d_model)))
        if cfg.encoder_input == "items":
            self.level_embed = nnx.Param(init(rngs.params(), (cfg.item_width, cfg.d_model)))
        self.dec_pos = nnx.Param(init(rngs.params(), (cfg.max_decoder_len, cfg.d_model)))
        self.encoder = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.encoder_layers)])
        self.decoder = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.decoder_layers)])
        self.enc_ln, self.dec_ln = nnx.LayerNorm(cfg.d_model, rngs=rngs), nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.out = nnx.Linear(cfg.d_model, cfg.output_size or cfg.vocab_size, rngs=rngs)

    def embed_encoder_input(self, tokens):
        """tokens [B, S] (0 = PAD) -> (inputs [B, S', d], mask [B, S']): S' = S for token input;
        for item input, the user token then one position per item_width-token slot."""
        if self.cfg.encoder_input == "tokens":
            return self.embed(tokens), tokens != 0
        w = self.cfg.item_width
        b, s = tokens.shape
        slots = tokens[:, 1:].reshape(b, (s - 1) // w, w)
        present = (slots != 0)[..., None]
        items = jnp.sum(jnp.where(present, self.embed(slots) + self.level_embed[...], 0.0), axis=2)
        x = jnp.concatenate([self.embed(tokens[:, :1]), items], axis=1)
        return x, jnp.concatenate([tokens[:, :1] != 0, present[..., 0].any(-1)], axis=1)

    def encode(self, tokens, key=None):
        """tokens [B, S] (0 = PAD) -> (memory [B, S', d], memory mask [B, S'])."""
        x, mask = self.embed_encoder_input(tokens)
        x = x + self.enc_pos[: x.shape[1]]
        keys = jax.random.split(key, len(self.encoder) + 1) if key is not None else [None] * (len(self.encoder) + 1)
        x = dropout(x, self.cfg.dropout, keys[-1])
        m = mask[:, None, None, :]
        for layer, k in zip(self.encoder, keys):
            x = layer(x, m, k)
        return self.enc_ln(x), mask

    def cross_kv(self, memory):
        """Cross-attention keys/values of every decoder layer, computed once per query."""
        return [layer.cross_attn.memory_kv(memory) for layer in self.decoder]

    def decode(self, dec_tokens, memory_mask, cross_kv, key=None):
        """dec_tokens [B, T] -> logits [B, T, V] (causal)."""
        t = dec_tokens.shape[1]
        y = self.embed(dec_tokens) + self.dec_pos[:t]
        keys = jax.random.split(key, len(self.decoder) + 1) if key is not None else [None] * (len(self.decoder) + 1)
        y = dropout(y, self.cfg.dropout, keys[-1])
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        cm = memory_mask[:, None, None, :]
        for layer, kv, k in zip(self.decoder, cross_kv, keys):
            y = layer(y, causal, cm, kv, k)
        return dense(self.out, self.dec_ln(y), self.cfg.dtype)

    def init_cache(self, n: int):
        """Empty self-attention caches (no positions yet) for n decoding sequences."""
        shape = (n, 0, self.cfg.num_heads, self.cfg.head_dim)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in self.decoder]

    def decode_step(self, token, t: int, cache, memory_mask, cross_kv, group: int = 1):
        """Inference: token [N] at position t -> (logits [N, V], cache). Same function as decode()
        restricted to the last position, without recomputing the prefix. Rows come in groups of
        `group` consecutive rows (beams) per memory row of memory_mask / cross_kv."""
        y = self.embed(token[:, None]) + self.dec_pos[t]
        cm = memory_mask[:, None, None, :]
        new = []
        for layer, kv, c in zip(self.decoder, cross_kv, cache):
            y, c = _decoder_layer_step(layer, y, c, t, cm, kv, group)
            new.append(c)
        return dense(self.out, self.dec_ln(y), self.cfg.dtype)[:, 0], new

    def __call__(self, enc_tokens, dec_tokens, key=None):
        k1, k2 = jax.random.split(key) if key is not None else (None, None)
        memory, mask = self.encode(enc_tokens, k1)
        return self.decode(dec_tokens, mask, self.cross_kv(memory), k2)
