"""Codes -> unique semantic IDs (TIGER's collision token), SID reports, streaming assignment."""
from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from rqsid_jax import workdir as wd
from rqsid_jax.errors import DataError
from rqsid_jax.quantization.train import usage_report


def collision_token(codes: np.ndarray) -> np.ndarray:
    """For each item, its rank among the items sharing its whole code tuple (0 when unique).

    Items keep dataset order inside a group, so the result is deterministic.
    """
    codes = np.asarray(codes)
    n = codes.shape[0]
    order = np.lexsort(codes.T[::-1])  # sort by c1, then c2, ...; stable in item order
    s = codes[order]
    new_group = np.ones(n, bool)
    new_group[1:] = np.any(s[1:] != s[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    tok = np.empty(n, np.int32)
    tok[order] = np.arange(n) - group_start
    return tok


def with_collision_token(codes: np.ndarray) -> np.ndarray:
    """[N, L] codes -> [N, L+1] unique SIDs."""
    return np.concatenate([codes, collision_token(codes)[:, None]], axis=1).astype(np.int32)


def collision_free_codes(codes: np.ndarray, last_cost: np.ndarray) -> np.ndarray:
    """Reassigns the last level so that items sharing their first L-1 codes get distinct last
    codes: a unique L-token SID for every item, no collision token.

    `last_cost` [N, M] is the cost of giving item i last code m (the squared distance of its
    last-level residual to code m; the quantizer's own choice is its argmin). In every prefix
    group whose last codes collide, a minimum-total-cost assignment (Hungarian method,
    scipy.optimize.linear_sum_assignment) picks distinct codes; groups without a collision keep
    their codes (already the cheapest). A group larger than the codebook cannot be made unique:
    each code is offered ceil(g / M) times, so its largest remaining collision is that small.
    Deterministic: groups are visited in sorted prefix order, items in dataset order.
    """
    from scipy.optimize import linear_sum_assignment

    codes = np.asarray(codes)
    last_cost = np.asarray(last_cost, np.float64)
    M = last_cost.shape[1]
    out = codes.astype(np.int32).copy()
    _, group = np.unique(codes[:, :-1], axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
        if np.unique(codes[rows, -1]).size == rows.size:
            continue
        copies = -(-rows.size // M)
        r, c = linear_sum_assignment(np.tile(last_cost[rows], (1, copies)))
        out[rows[r], -1] = c % M
    return out


def group_sizes(codes: np.ndarray) -> np.ndarray:
    """Size of every distinct code tuple's group."""
    _, counts = np.unique(np.asarray(codes), axis=0, return_counts=True)
    return counts


def sid_report(codes: np.ndarray, codebook_size: int, recon_mse: Optional[float] = None) -> dict:
    """Per-level usage and perplexity, prefix uniqueness and collision groups of codes."""
    codes = np.asarray(codes)
    n, L = codes.shape
    sizes = group_sizes(codes)
    hist = np.bincount(sizes)
    sids = with_collision_token(codes)
    rep = {
        "items": int(n), "levels": int(L), "codebook_size": int(codebook_size),
        **usage_report(codes, codebook_size),
        "unique_prefix_ratio": float((sizes == 1).sum() / n),
        "distinct_prefixes": int(sizes.size),
        "max_collision_group": int(sizes.max()),
        # {group size: number of groups of that size}
        "collision_groups": {int(k): int(v) for k, v in enumerate(hist) if v and k},
        "all_sids_unique": bool(np.unique(sids, axis=0).shape[0] == n),
    }
    if recon_mse is not None:
        rep["reconstruction_mse"] = float(recon_mse)
    return rep


def unique_sids(codes: np.ndarray, collision_token_always: bool = True) -> np.ndarray:
    """SIDs from codes: TIGER's [N, L+1] with the collision token, or (collision_token_always
    False) the codes alone when they are already unique, [N, L]."""
    codes = np.asarray(codes, np.int32)
    if not collision_token_always and group_sizes(codes).max() == 1:
        return codes
    return with_collision_token(codes)


def save_sids(directory: str, codes: np.ndarray, item_ids: Sequence[str], asins: Sequence[str],
              titles: Optional[Sequence[str]] = None, collision_token_always: bool = True) -> np.ndarray:
    """Writes codes.npy [N, L], sids.npy (see unique_sids), item_ids.json (row order) and sid_table.tsv."""
    os.makedirs(directory, exist_ok=True)
    codes = np.asarray(codes, np.int32)
    sids = unique_sids(codes, collision_token_always)
    np.save(os.path.join(directory, wd.CODES), codes)
    np.save(os.path.join(directory, wd.SIDS), sids)
    with open(os.path.join(directory, wd.ITEM_IDS), "w") as f:
        json.dump({"item_ids": list(item_ids), "asins": list(asins)}, f)
    with open(os.path.join(directory, wd.SID_TABLE), "w", encoding="utf-8") as f:
        f.write("row\titem_id\tasin\tsid\ttitle\n")
        for i, sid in enumerate(sids):
            t = (titles[i] if titles is not None else "").replace("\t", " ").replace("\n", " ")
            f.write(f"{i}\t{item_ids[i]}\t{asins[i]}\t{'-'.join(map(str, sid))}\t{t}\n")
    return sids


def _npy_layout(path: str) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, data offset) of a .npy file, read from its header without loading it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})")
    if fortran or dtype.hasobject or len(shape) != 2:
        raise DataError(f"{path}: expected a C-ordered numeric [items, dim] array, got shape {shape}, {dtype}")
    return dtype, shape, offset


def assign_codes_streaming(encode: Callable[[np.ndarray], np.ndarray], embeddings_path: str, out_path: str,
                           levels: int, chunk_size: int = 8192, progress: bool = True) -> np.memmap:
    """Encodes an [N, D] .npy in fixed-size chunks into an [N, L] int32 .npy memmap.

    Memory stays flat in N: each chunk is mapped on its own and unmapped after use (pages of
    one long-lived map would stay resident and grow with N). The last chunk is padded to
    `chunk_size` so the encoder compiles once.
    """
    dtype, (n, d), offset = _npy_layout(embeddings_path)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.int32, shape=(n, levels))
    row = dtype.itemsize * d
    for start in tqdm(range(0, n, chunk_size), desc="assign SIDs", disable=not progress):
        m = min(chunk_size, n - start)
        view = np.memmap(embeddings_path, dtype=dtype, mode="r", offset=offset + start * row, shape=(m, d))
        block = np.array(view, np.float32)
        del view
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(1))[0])
            raise DataError(f"{embeddings_path}: NaN/inf at item index {bad}")
        if m < chunk_size:
            block = np.concatenate([block, np.zeros((chunk_size - m, d), np.float32)])
        out[start:start + m] = np.asarray(encode(block))[:m]
        if (start // chunk_size) % 16 == 15:
            out.flush()  # written pages go to disk and stop counting as dirty memory
    out.flush()
    return out
