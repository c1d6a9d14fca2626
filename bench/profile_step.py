"""Where one retriever training step's time goes: a JAX profiler (perfetto) trace of compiled
steps on a real Beauty batch, each op's time attributed by the source function that emitted it
(the compiled HLO's stack frames), plus the host's batch assembly time per step.

Prints one JSON line per (dtype, encoder input) with the share of op time per category:
dense matmuls (q/k/v projections, MLP, logits), attention einsums (scores, mixing and the output
projection, all in Attention.__call__), layout copies/transposes, dropout,
softmax, LayerNorm, loss, optimizer update, other elementwise.
"""
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import jax
import numpy as np

jax.config.update("jax_include_full_tracebacks_in_locations", True)
sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common import beauty_inputs, beauty_parser, emit  # noqa: E402
from bench.retriever_train import KEYS  # noqa: E402
from rqsid_jax import sharding  # noqa: E402
from rqsid_jax.retrieval.input_pipeline import train_examples  # noqa: E402
from rqsid_jax.retrieval.train import build_retriever, default_config, make_train_step, optimizer  # noqa: E402


def _frames(hlo: str) -> dict[int, list[str]]:
    """stack_frame_id -> function names, innermost first, from the HLO's frame tables."""
    def table(name, pattern):
        block = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", hlo, re.S | re.M)
        return {int(m.group(1)): m.groups()[1:] for m in re.finditer(pattern, block.group(1))} if block else {}

    funcs = table("FunctionNames", r'(\d+) "([^"]*)"')
    locs = table("FileLocations", r"(\d+) \{file_name_id=\d+ function_name_id=(\d+)")
    frames = table("StackFrames", r"(\d+) \{file_location_id=(\d+)(?: parent_frame_id=(\d+))?")
    out = {}
    for fid in frames:
        names, f = [], fid
        while f in frames:
            loc, parent = frames[f]
            names.append(funcs.get(int(locs.get(int(loc), ("0",))[0]), ("?",))[0])
            # the text format prints each parent as its id + 1 (0 = none)
            f = int(parent) - 1 if parent and int(parent) > 1 else None
        out[fid] = names
    return out


# the model's own functions: the innermost one that emitted a matmul names its kind
MODEL_FUNCTIONS = {"Attention", "MLP", "Seq2Seq", "EncoderLayer", "DecoderLayer", "dense"}
# LayerNorm's own ops (flax frames are not recorded: they show as the calling layer's)
NORM_OPS = {"rsqrt", "reduce_sum", "mean", "var", "square", "integer_pow", "div", "sub", "reduce_precision"}
LAYERS = ("EncoderLayer.__call__", "DecoderLayer.__call__", "Seq2Seq.encode", "Seq2Seq.decode")


def category(instr: str, op_name: str, names: list[str]) -> str:
    """One cost category for a compiled HLO op (fusion) from its name, its root's JAX op name
    and the project's source functions that emitted it (innermost first)."""
    prim = op_name.rsplit("/", 1)[-1]
    inner = names[0] if names else ""
    if "dropout" in names:
        return "dropout"
    if any(n == "token_loss" or n.endswith("loss_fn") for n in names[:2]):
        return "loss"
    if "Attention._weights" in names:
        return "softmax"
    if "dot_general" in prim or instr.startswith(("ynn_fusion", "dot")):
        model = [n for n in names if n.split(".")[0] in MODEL_FUNCTIONS]
        return "attention einsums" if model and model[0] == "Attention.__call__" else "dense matmuls"
    if instr.startswith(("copy", "transpose")) or prim in ("transpose", "copy"):
        return "layout copies"
    if inner.startswith("make_train_step.<locals>.step"):
        return "optimizer"
    if prim in NORM_OPS and inner in LAYERS:
        return "layernorm"
    return "other elementwise"


def profile(step, state, batch, key, hlo: str, steps: int = 3) -> dict:
    frames = _frames(hlo)
    meta = {}
    for line in hlo.splitlines():
        m = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"(?: stack_frame_id=(\d+))?", line)
        if m:
            meta[m.group(1)] = (m.group(1), m.group(2), frames.get(int(m.group(3) or -1), []))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for i in range(steps):
                state, loss = step(state, batch, jax.random.fold_in(key, i))
                jax.block_until_ready(loss)
        events = json.load(gzip.open(glob.glob(f"{d}/**/*perfetto_trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    cost = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in meta:
            cost[category(*meta[e["name"]])] += e["dur"] / steps / 1e3
    return dict(cost)


def main():
    ap = beauty_parser(sids=False)
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--encoder_inputs", default="tokens,items")
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    ds, sp, sids, mesh = beauty_inputs(a)
    for dt in a.dtypes.split(","):
        for inp in a.encoder_inputs.split(","):
            cfg = default_config()
            cfg.update(dtype=dt, encoder_input=inp, batch_size=a.batch)
            r, params = build_retriever(cfg, sids)
            tx = optimizer(cfg)
            state = sharding.replicate({"params": params, "opt_state": tx.init(params),
                                        "step": jax.numpy.int32(0)}, mesh)
            col = r.collator(train_examples(sp, r.vocab), a.batch)
            plan = col.plan(0, 0)
            t = time.perf_counter()
            for i in range(20):
                col(plan[i])
            collate_ms = (time.perf_counter() - t) / 20 * 1e3
            # a batch whose encoder length is nearest the epoch's mean padded length
            lengths = np.array([r.buckets[int(col.bucket_of[p[p >= 0]].max())] for p in plan])
            b = col(plan[int(np.argmin(np.abs(lengths - lengths.mean())))])
            batch = sharding.shard_batch({k: b[k] for k in KEYS}, mesh)
            fn = jax.jit(make_train_step(r, cfg, tx), donate_argnums=0)
            key = jax.random.key(0)
            hlo = fn.lower(state, batch, key).compile().as_text()
            for _ in range(2):
                state, loss = fn(state, batch, key)
            jax.block_until_ready(loss)
            t = time.perf_counter()
            for i in range(5):
                state, loss = fn(state, batch, jax.random.fold_in(key, i))
            jax.block_until_ready(loss)
            step_ms = (time.perf_counter() - t) / 5 * 1e3
            cost = profile(fn, state, batch, key, hlo)
            total = sum(cost.values())
            emit("profile_step", dtype=dt, encoder_input=inp, encoder_tokens=b["encoder"].shape[1],
                 step_ms=round(step_ms), op_ms_summed_over_threads=round(total),
                 share={k: round(v / total, 3) for k, v in sorted(cost.items(), key=lambda kv: -kv[1])},
                 host_collate_ms_per_batch=round(collate_ms, 1))


if __name__ == "__main__":
    main()
