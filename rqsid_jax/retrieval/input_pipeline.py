"""Retriever examples: (user token, latest <= 20 history items) -> next item, batched by length.

Training examples are sliding windows over each user's *training part* only, so validation
and test targets never enter training. Batches are formed inside length buckets (little
compute on padding, a handful of shapes for jit), in an order that is a function of
(seed, epoch) alone, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from rqsid_jax.data.dataset import MAX_HISTORY, Split
from rqsid_jax.errors import DataError
from rqsid_jax.retrieval.sid_vocab import PAD, SidVocab, item_lengths


@dataclasses.dataclass
class Examples:
    """(user token, history, target) rows for training or evaluation."""
    user_token: np.ndarray  # [E] vocabulary id of the user token
    history: np.ndarray  # [E, H] item indices, oldest first, -1 padded
    target: np.ndarray  # [E] item index
    user: np.ndarray  # [E] row in the split (for per-user outputs)

    def __len__(self):
        return self.target.size

    def subset(self, rows: np.ndarray) -> "Examples":
        """The given rows only."""
        return Examples(self.user_token[rows], self.history[rows], self.target[rows], self.user[rows])


def _pad_histories(hists, max_history):
    out = np.full((len(hists), max_history), -1, np.int32)
    for i, h in enumerate(hists):
        h = h[-max_history:]
        out[i, : len(h)] = h
    return out


def user_token_ids(split: Split, vocab: SidVocab, users: np.ndarray) -> np.ndarray:
    """Vocabulary ids of the users' hashed tokens, folded onto vocab.num_user_tokens buckets
    (1 bucket = no user information: one shared start token)."""
    return vocab.user_offset + split.user_tokens[users] % vocab.num_user_tokens


AUGMENTATIONS = ("prefixes", "subsequences")


def train_examples(split: Split, vocab: SidVocab, max_history: int = MAX_HISTORY,
                   augment: str = "prefixes") -> Examples:
    """Examples from the training parts. "prefixes": each item after the first, with the (up
    to max_history) items before it (TIGER). "subsequences": each contiguous window of a
    training part, i.e. that target with every history s[j:i], i - max_history <= j < i (GRID);
    the same targets, with histories of every length, about min(i, max_history) x as many."""
    if augment not in AUGMENTATIONS:
        raise DataError(f"retriever.augment='{augment}' is not one of {AUGMENTATIONS}")
    users, hists, targets = [], [], []
    for u, s in enumerate(split.train):
        for i in range(1, len(s)):
            starts = range(max(0, i - max_history), i) if augment == "subsequences" else [max(0, i - max_history)]
            for j in starts:
                users.append(u); hists.append(s[j:i]); targets.append(s[i])
    users = np.array(users, np.int64)
    return Examples(user_token_ids(split, vocab, users), _pad_histories(hists, max_history),
                    np.array(targets, np.int32), users)


def eval_examples(split: Split, vocab: SidVocab, which: str, max_history: int = MAX_HISTORY) -> Examples:
    """One example per user: its validation or test history and target."""
    hist = split.valid_history if which == "validation" else split.test_history
    tgt = split.valid_target if which == "validation" else split.test_target
    users = np.arange(split.num_users)
    return Examples(user_token_ids(split, vocab, users), _pad_histories(hist, max_history), tgt.astype(np.int32),
                    users)


def query_examples(user_tokens: np.ndarray, histories, vocab: SidVocab, num_items: int,
                   max_history: int = MAX_HISTORY) -> Examples:
    """Examples for ad-hoc queries. Unknown item ids are an error; an empty history is allowed
    (the encoder then sees the user token alone)."""
    for q, h in enumerate(histories):
        h = np.asarray(h)
        if h.size and (h.min() < 0 or h.max() >= num_items):
            bad = int(h[(h < 0) | (h >= num_items)][0])
            raise DataError(f"query {q}: unknown item index {bad} (catalogue has {num_items} items)")
    n = len(histories)
    return Examples(vocab.user_offset + np.asarray(user_tokens, np.int64) % vocab.num_user_tokens,
                    _pad_histories(histories, max_history),
                    np.full(n, -1, np.int32), np.arange(n))


def sample_rows(n: int, k: int, seed) -> np.ndarray:
    """Sorted random k of n rows, a function of `seed` alone (all rows when k is 0 or >= n)."""
    if not k or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


class Collator:
    """Turns example indices into padded token arrays with a fixed encoder length per bucket."""

    def __init__(self, examples: Examples, item_tok: np.ndarray, buckets: list[int], batch_size: int,
                 compact: bool = True):
        self.ex, self.item_tok, self.buckets, self.batch_size = examples, item_tok, buckets, batch_size
        # Token input moves PADs of variable-length SIDs to the end; item input keeps each item's
        # fixed-width slot (identical for fixed-length SIDs, whose slots have no inner PAD).
        self.compact = compact
        # PAD row for history slot -1
        self.table = np.concatenate([item_tok, np.zeros((1, item_tok.shape[1]), np.int32)])
        # every item takes its real tokens (compact) or its whole slot (item input)
        ilen = item_lengths(item_tok) if compact else np.full(len(item_tok), item_tok.shape[1])
        self.enc_len = 1 + np.where(examples.history >= 0, ilen[examples.history], 0).sum(1)
        if self.enc_len.max() > buckets[-1]:
            raise DataError(f"encoder length {self.enc_len.max()} exceeds the largest bucket {buckets[-1]}")
        self.bucket_of = np.searchsorted(np.asarray(buckets), self.enc_len)

    def plan(self, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
        """Batches of example indices (each within one bucket; the last of a bucket padded with -1)."""
        rng = np.random.default_rng([seed, epoch])
        batches = []
        for b in range(len(self.buckets)):
            idx = np.flatnonzero(self.bucket_of == b)
            if shuffle:
                idx = rng.permutation(idx)
            for s in range(0, idx.size, self.batch_size):
                chunk = idx[s:s + self.batch_size]
                if chunk.size < self.batch_size:
                    chunk = np.concatenate([chunk, np.full(self.batch_size - chunk.size, -1)])
                batches.append(chunk)
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __call__(self, idx: np.ndarray) -> dict:
        real = idx >= 0
        i = np.where(real, idx, 0)
        hist = self.ex.history[i]
        toks = self.table[np.where(hist >= 0, hist, -1)].reshape(len(i), -1)
        if self.compact:  # non-PAD tokens first, order kept (variable-length items leave gaps)
            order = np.argsort(toks == PAD, axis=1, kind="stable")
            toks = np.take_along_axis(toks, order, axis=1)
        length = self.buckets[int(self.bucket_of[i[real]].max())] if real.any() else self.buckets[0]
        enc = np.zeros((len(i), length), np.int32)
        enc[:, 0] = self.ex.user_token[i]
        w = min(length - 1, toks.shape[1])
        enc[:, 1:1 + w] = toks[:, :w]
        tgt = self.ex.target[i]
        return {"encoder": enc, "target_item": np.where(real, tgt, -1).astype(np.int32),
                "target": self.item_tok[np.maximum(tgt, 0)], "weight": real.astype(np.float32)}

    def dataset(self, plan: list[np.ndarray], start: int = 0, threads: int = 2):
        """A grain pipeline over the plan's batches from `start`, collated on worker threads."""
        ds = grain.MapDataset.source(plan[start:]).map(self)
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4))


BUCKET_ITEMS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15)


def default_buckets(vocab: SidVocab, max_history: int = MAX_HISTORY, items=BUCKET_ITEMS) -> list[int]:
    """Encoder lengths 1 + n * (tokens per item) for n in `items` and max_history. With
    fixed-length SIDs each example then fits a bucket exactly: on Beauty the default eleven
    shapes pad 27.8 real tokens to 29.4 on average (34.4 with lengths 16/24/32/48/64/81)."""
    per_item = vocab.max_sid_tokens
    return [1 + n * per_item for n in sorted(set(items)) if n < max_history] + [1 + max_history * per_item]
