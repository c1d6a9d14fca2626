"""The paper's fixes, each followed by collision resolution so every item stays unique.

A mitigated SID set is level-aligned: `sids` [N, L'+1] holds, per column, the code of one
original level (-1 where a variable-length SID has no token there) and, in the last column,
the collision token. `levels` names the original level of each code column. The retriever
turns a row into tokens by skipping -1 and appending an end marker.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rqsid_jax.sid.assign import collision_token

ABSENT = -1


@dataclasses.dataclass
class SidSet:
    """A named SID table from the codes (a mitigation or the baseline)."""
    name: str
    sids: np.ndarray  # int32 [N, C+1]; -1 = absent; last column collision token
    levels: list[int]  # original level (0-based) of each code column
    capacity: int  # number of distinct SIDs the structure can express (without collision token)

    @property
    def variable_length(self) -> bool:
        """Whether some SIDs have absent levels."""
        return bool((self.sids == ABSENT).any())

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per SID."""
        return (self.sids != ABSENT).sum(axis=1)

    def unique(self) -> bool:
        """Whether every item's SID differs."""
        return np.unique(self.sids, axis=0).shape[0] == self.sids.shape[0]


def _resolve(codes: np.ndarray) -> np.ndarray:
    """Appends a collision token numbering items that share the same (possibly shortened) codes."""
    return np.concatenate([codes, collision_token(codes)[:, None]], axis=1).astype(np.int32)


def baseline(codes: np.ndarray, codebook_size: int) -> SidSet:
    """The codes as they are, plus the collision token."""
    L = codes.shape[1]
    return SidSet("baseline", _resolve(codes), list(range(L)), codebook_size ** L)


def remove_layer(codes: np.ndarray, codebook_size: int, layer: int = 1) -> SidSet:
    """Heuristic: drop layer 2 (0-based 1) from an L-layer SID; capacity M^(L-1)."""
    L = codes.shape[1]
    keep = [l for l in range(L) if l != layer]
    return SidSet(f"remove_layer{layer + 1}", _resolve(codes[:, keep]), keep, codebook_size ** (L - 1))


def capacity_top_k(codebook_size: int, levels: int, k: int) -> int:
    """Distinct top@K SIDs (without the collision token): M^L - (K - 1) M^(L-1) for K >= 1.

    The K head tokens of layer 2 take their M^(L-1) full SIDs each away, and the shortened
    SIDs [c1, -, c3..cL] they leave behind are shared by all K: M^(L-1) of them, not K M^(L-2).
    The paper's section 5.2 writes M^L + K(M^(L-2) - M^(L-1)) (40 for M=4, L=3, K=2); counting
    every SID the construction can emit gives 48 = 64 - 1 * 16, this formula
    (tests/test_hourglass.py enumerates it).
    """
    M, L = codebook_size, levels
    if k == 0 or L < 2:
        return M ** L
    return M ** L - (k - 1) * M ** (L - 1)


def top_k_tokens(codes: np.ndarray, codebook_size: int, k: int, layer: int = 1) -> np.ndarray:
    """The k most frequent tokens of a level, sorted."""
    counts = np.bincount(codes[:, layer], minlength=codebook_size)
    return np.sort(np.argsort(-counts, kind="stable")[:k])


def top_k_removal(codes: np.ndarray, codebook_size: int, k: int, layer: int = 1) -> SidSet:
    """Variable length: items whose layer-2 token is among the K most frequent lose that token."""
    top = top_k_tokens(codes, codebook_size, k, layer)
    out = codes.astype(np.int32).copy()
    out[np.isin(codes[:, layer], top), layer] = ABSENT
    # Items keep their level-aligned columns, so a shortened SID [c1, -, c3] can never equal a
    # full one; collisions are only among items with the same visible tokens.
    return SidSet(f"top@{k}", _resolve(out), list(range(codes.shape[1])),
                  capacity_top_k(codebook_size, codes.shape[1], k))


def swap_layers(codes: np.ndarray, codebook_size: int, a: int = 0, b: int = 1) -> SidSet:
    """The paper's Table 1 probe: exchange layers 1 and 2."""
    order = list(range(codes.shape[1]))
    order[a], order[b] = order[b], order[a]
    return SidSet(f"swap{a + 1}{b + 1}", _resolve(codes[:, order]), order, codebook_size ** codes.shape[1])


def all_mitigations(codes: np.ndarray, codebook_size: int, top_ks=(20, 50, 100)) -> list[SidSet]:
    """Baseline, layer 2 removed, layers 1/2 swapped and top@K for each K."""
    sets = [baseline(codes, codebook_size), remove_layer(codes, codebook_size), swap_layers(codes, codebook_size)]
    sets += [top_k_removal(codes, codebook_size, k) for k in top_ks if k <= codebook_size]
    return sets
