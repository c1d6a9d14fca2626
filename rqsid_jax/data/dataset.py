"""In-memory dataset: item table, chronological user sequences, and the TIGER split."""
from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Optional, Sequence

import numpy as np

from rqsid_jax.errors import DataError

NUM_USER_BUCKETS = 2000  # TIGER hashes user ids into 2000 user tokens.
MAX_HISTORY = 20  # TIGER caps the history to the latest 20 items.


def hash_user(user_id: str, buckets: int = NUM_USER_BUCKETS) -> int:
    """Deterministic user bucket (crc32, not Python's salted hash())."""
    return zlib.crc32(str(user_id).encode("utf-8")) % buckets


@dataclasses.dataclass
class ItemTable:
    """Items in dataset order; row i is item index i everywhere in the library."""

    ids: list[str]  # the input files' item ids (P5 integer ids as strings, or ASINs)
    asins: list[str]
    titles: list[str]
    brands: list[str]
    categories: list[list[str]]
    prices: list[Optional[float]]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def bare(cls, ids: Sequence[str], asins: Optional[Sequence[str]] = None) -> "ItemTable":
        """Items with ids (and ASINs) only, no text."""
        n = len(ids)
        return cls(list(ids), list(asins) if asins is not None else list(ids), [""] * n, [""] * n,
                   [[] for _ in range(n)], [None] * n)

    def has_text(self) -> bool:
        """Whether any item has a title, brand or category."""
        return any(self.titles) or any(self.brands) or any(self.categories)


@dataclasses.dataclass
class Split:
    """TIGER leave-one-out split. Item values are 0-based item indices."""

    user_ids: list[str]
    user_tokens: np.ndarray  # int32 [U] in [0, NUM_USER_BUCKETS)
    train: list[np.ndarray]  # per user: all items but the last two (training part)
    valid_history: list[np.ndarray]  # latest <= max_history items before the validation target
    valid_target: np.ndarray  # int32 [U]
    test_history: list[np.ndarray]  # latest <= max_history items before the test target
    test_target: np.ndarray  # int32 [U]

    @property
    def num_users(self) -> int:
        """Number of users."""
        return len(self.user_ids)


@dataclasses.dataclass
class SequenceDataset:
    """Items plus each user's chronological item sequence (and optional given embeddings)."""
    name: str
    items: ItemTable
    user_ids: list[str]
    sequences: list[np.ndarray]  # int32 item indices, oldest first
    embeddings: Optional[np.ndarray] = None  # user-supplied [N, D] float32

    def __post_init__(self):
        n = len(self.items)
        for u, seq in zip(self.user_ids, self.sequences):
            if seq.size and (seq.min() < 0 or seq.max() >= n):
                bad = int(seq[(seq < 0) | (seq >= n)][0])
                raise DataError(f"user {u}: item index {bad} out of range [0, {n})")
        if self.embeddings is not None:
            validate_embeddings(self.embeddings, n, source=f"{self.name} embeddings")

    @property
    def num_users(self) -> int:
        """Number of users."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return len(self.items)

    @property
    def num_interactions(self) -> int:
        """Number of (user, item) interactions."""
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict:
        """Counts and sequence-length statistics for the data stage's metrics."""
        lengths = np.array([len(s) for s in self.sequences])
        return {"users": self.num_users, "items": self.num_items,
                "interactions": self.num_interactions,
                "mean_history": float(lengths.mean()) if lengths.size else 0.0}

    def split(self, max_history: int = MAX_HISTORY, buckets: int = NUM_USER_BUCKETS) -> Split:
        """Leave-one-out: last item test, second to last validation, the rest training.

        Users with fewer than 3 interactions cannot be split and are left out (counted in the log).
        """
        keep = [i for i, s in enumerate(self.sequences) if len(s) >= 3]
        if len(keep) < len(self.sequences):
            logging.warning("%s: %d users with < 3 interactions left out of the split",
                            self.name, len(self.sequences) - len(keep))
        seqs = [self.sequences[i] for i in keep]
        users = [self.user_ids[i] for i in keep]
        return Split(
            user_ids=users,
            user_tokens=np.array([hash_user(u, buckets) for u in users], np.int32),
            train=[s[:-2] for s in seqs],
            valid_history=[s[:-2][-max_history:] for s in seqs],
            valid_target=np.array([s[-2] for s in seqs], np.int32),
            test_history=[s[:-1][-max_history:] for s in seqs],
            test_target=np.array([s[-1] for s in seqs], np.int32),
        )


def validate_embeddings(emb: np.ndarray, num_items: int, source: str) -> np.ndarray:
    """The array as float32 [items, dim], or a DataError naming `source` and what is wrong."""
    if emb.ndim != 2:
        raise DataError(f"{source}: expected a 2-D [items, dim] array, got shape {emb.shape}")
    if emb.shape[0] != num_items:
        raise DataError(f"{source}: {emb.shape[0]} embedding rows but the dataset has {num_items} items")
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{source}: NaN/inf in {bad.size} rows, first at item index {int(bad[0])}")
    return emb


def kcore(users: list[str], seqs: list[list[int]], k: int = 5) -> tuple[list[str], list[list[int]]]:
    """Iterative k-core: drop users and items with fewer than k interactions until stable."""
    while True:
        counts: dict[int, int] = {}
        for s in seqs:
            for it in s:
                counts[it] = counts.get(it, 0) + 1
        new_seqs = [[it for it in s if counts[it] >= k] for s in seqs]
        kept = [(u, s) for u, s in zip(users, new_seqs) if len(s) >= k]
        changed = len(kept) != len(users) or any(len(a) != len(b) for a, b in zip(new_seqs, seqs))
        users, seqs = [u for u, _ in kept], [s for _, s in kept]
        if not changed:
            return users, seqs
