"""Mixed-precision matmuls: low-precision inputs, float32 accumulation, float32 results.

Master parameters, optimizer state, activations between matmuls, LayerNorm statistics,
softmax, logits and the loss all stay float32. Only the operands of each matmul / einsum are
cast to the compute dtype (bfloat16), and every product accumulates in float32
(`preferred_element_type`): on CPUs with AVX512-BF16 or AMX, and on TPUs/GPUs, that is the fast
path; a bfloat16 *result* is slower than float32 on those CPUs.

The backward pass needs its own rule: JAX's transpose of a mixed dot multiplies the float32
cotangent by a bfloat16 operand, which XLA upcasts to a float32 matmul. `einsum` below casts
the cotangent to the compute dtype too, so all three matmuls of a layer (forward, input
gradient, weight gradient) run in the compute dtype; the residuals kept for the backward are
the compute-dtype operands (half the memory of float32 ones).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when this x86 CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(dtype: str, platform: str | None = None) -> str:
    """'auto' -> bfloat16 on TPU/GPU and on CPUs with hardware bfloat16, float32 elsewhere (on a
    CPU without it, e.g. AMD Zen 3, XLA emulates bfloat16 matmuls at ~0.6x float32 speed:
    bench/retriever_train.py measures both)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype='{dtype}' is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    platform = platform or jax.default_backend()
    if platform in ("tpu", "gpu", "cuda", "rocm"):
        return "bfloat16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def _grad_equations(eq: str) -> tuple[str, str]:
    """For 'a,b->o': the equations giving d/da = 'o,b->a' and d/db = 'a,o->b'. Valid when every
    index of each operand appears in the other operand or in the output (no index summed over
    one operand alone), which holds for every matmul of this model."""
    ins, out = eq.replace(" ", "").split("->")
    a, b = ins.split(",")
    for x, y in ((a, b), (b, a)):
        if len(set(x)) != len(x) or any(c not in y and c not in out for c in x):
            raise ValueError(f"einsum '{eq}': an operand has a repeated or self-summed index")
    return f"{out},{b}->{a}", f"{a},{out}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed(eq: str, dtype: str, a, b):
    return _mixed_fwd(eq, dtype, a, b)[0]


def _mixed_fwd(eq, dtype, a, b):
    ac, bc = a.astype(dtype), b.astype(dtype)
    out = jnp.einsum(eq, ac, bc, preferred_element_type=jnp.float32)
    # zero-size markers carry the operands' own dtypes to the backward
    return out, (ac, bc, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _mixed_bwd(eq, dtype, res, g):
    ac, bc, a_dt, b_dt = res
    eq_a, eq_b = _grad_equations(eq)
    gc = g.astype(dtype)
    da = jnp.einsum(eq_a, gc, bc, preferred_element_type=jnp.float32)
    db = jnp.einsum(eq_b, ac, gc, preferred_element_type=jnp.float32)
    return da.astype(a_dt.dtype), db.astype(b_dt.dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)


def einsum(eq: str, a, b, dtype: str = "float32"):
    """jnp.einsum of two operands in `dtype` with float32 accumulation and a float32 result
    (plain float32 einsum when dtype is float32)."""
    if dtype == "float32":
        return jnp.einsum(eq, a, b)
    _grad_equations(eq)  # checked when traced, not first in the backward
    return _mixed(eq, dtype, a, b)


def dense(layer, x, dtype: str = "float32"):
    """An nnx.Linear applied with `einsum`'s precision: the same parameters as layer(x)."""
    w = layer.kernel[...]
    y = einsum("nm,mk->nk", x.reshape(-1, x.shape[-1]), w, dtype).reshape(*x.shape[:-1], w.shape[-1])
    return y if layer.bias is None else y + layer.bias[...]
