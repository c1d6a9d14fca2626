"""SID vocabulary and the prefix index of valid SIDs.

Token ids: 0 PAD, 1 EOS (end marker of variable-length SIDs), 2 BOS (decoder start), then one
block per SID column (each code level, and the collision level), then the user buckets.
A SID row is level-aligned with -1 where a variable-length SID has no token (sid/mitigations.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rqsid_jax.errors import DataError

PAD, EOS, BOS = 0, 1, 2
NUM_SPECIAL = 3


@dataclasses.dataclass
class SidVocab:
    """Token ids: specials, one block per SID column, then the user tokens."""
    column_sizes: list[int]  # vocabulary block size of each SID column
    num_user_tokens: int
    variable_length: bool

    @property
    def offsets(self) -> np.ndarray:
        """First token id of each SID column's block."""
        return NUM_SPECIAL + np.concatenate([[0], np.cumsum(self.column_sizes)[:-1]]).astype(np.int64)

    @property
    def user_offset(self) -> int:
        """First user-token id (SID tokens come before it)."""
        return NUM_SPECIAL + int(sum(self.column_sizes))

    @property
    def size(self) -> int:
        """Vocabulary size."""
        return self.user_offset + self.num_user_tokens

    @property
    def max_sid_tokens(self) -> int:
        """Decoder target length: every column, plus EOS for variable-length SIDs."""
        return len(self.column_sizes) + int(self.variable_length)

    @classmethod
    def from_sids(cls, sids: np.ndarray, num_user_tokens: int = 2000) -> "SidVocab":
        """The vocabulary that fits a SID table (-1 entries make it variable-length)."""
        sids = np.asarray(sids)
        sizes = [int(sids[:, c].max()) + 1 for c in range(sids.shape[1])]
        return cls(sizes, num_user_tokens, bool((sids < 0).any()))


def item_tokens(sids: np.ndarray, vocab: SidVocab) -> np.ndarray:
    """[N, T] token ids of every item's SID, left-aligned, PAD after the end (EOS when variable)."""
    sids = np.asarray(sids)
    n, C = sids.shape
    T = vocab.max_sid_tokens
    out = np.full((n, T), PAD, np.int32)
    present = sids >= 0
    toks = np.where(present, sids + vocab.offsets[None, :], PAD)
    lengths = present.sum(1)
    order = np.argsort(~present, axis=1, kind="stable")  # present columns first, in level order
    compact = np.take_along_axis(toks, order, axis=1)
    out[:, :C] = np.where(np.arange(C)[None] < lengths[:, None], compact, PAD)
    if vocab.variable_length:
        out[np.arange(n), lengths] = EOS
    return out


def cut_at_eos(tokens: np.ndarray) -> np.ndarray:
    """Decoded sequences [..., T] with every position after the first EOS set to PAD: a model
    never learns what follows EOS (training targets stop there), so it is not part of the SID."""
    tokens = np.asarray(tokens)
    is_eos = tokens == EOS
    after = (np.cumsum(is_eos, axis=-1) - is_eos) > 0
    return np.where(after, PAD, tokens)


def item_lengths(tokens: np.ndarray) -> np.ndarray:
    """Real (non-PAD) tokens per item row."""
    return (tokens != PAD).sum(1)


@dataclasses.dataclass
class PrefixIndex:
    """A trie of the catalogue's token sequences in CSR form (memory ~ total tokens, not M^L).

    Node 0 is the root. Children of node v are child_token/child_node[start[v]:start[v]+count[v]],
    sorted by token. A leaf holds item `leaf_item[v]`; leaves get a PAD self-loop so finished
    beams keep their score for the remaining static steps.
    """
    start: np.ndarray
    count: np.ndarray
    child_token: np.ndarray
    child_node: np.ndarray
    leaf_item: np.ndarray  # -1 for inner nodes
    max_children: np.ndarray  # [T] widest node at each depth
    depth: int

    @property
    def num_nodes(self) -> int:
        """Number of trie nodes."""
        return self.start.size

    @classmethod
    def build(cls, tokens: np.ndarray) -> "PrefixIndex":
        """The CSR prefix trie of the items' token rows."""
        tokens = np.asarray(tokens)
        n, T = tokens.shape
        # Unique prefixes per depth, numbered in sorted order; a node id per (depth, prefix).
        node_of = np.zeros(n, np.int64)  # current node of every item (root)
        num_nodes = 1
        parents, toks, childs = [], [], []
        max_children = np.zeros(T, np.int64)
        leaf_item = [-1]
        for d in range(T):
            active = tokens[:, d] != PAD
            key = np.stack([node_of[active], tokens[active, d]], 1)
            uniq, inv = np.unique(key, axis=0, return_inverse=True)
            ids = num_nodes + np.arange(len(uniq))
            parents.append(uniq[:, 0]); toks.append(uniq[:, 1]); childs.append(ids)
            _, per_parent = np.unique(uniq[:, 0], return_counts=True)
            max_children[d] = per_parent.max() if per_parent.size else 0
            new = node_of.copy()
            new[active] = ids[inv.ravel()]
            node_of = new
            num_nodes += len(uniq)
            leaf_item += [-1] * len(uniq)
        leaf = np.array(leaf_item, np.int64)
        dup = np.bincount(node_of, minlength=num_nodes)[node_of] > 1
        if dup.any():
            raise DataError(f"SIDs are not unique: item {int(np.flatnonzero(dup)[0])} shares its SID")
        leaf[node_of] = np.arange(n)
        parent = np.concatenate(parents)
        tok = np.concatenate(toks)
        child = np.concatenate(childs)
        # leaves: PAD self-loop
        leaves = np.flatnonzero(leaf >= 0)
        parent = np.concatenate([parent, leaves]); tok = np.concatenate([tok, np.full(leaves.size, PAD)])
        child = np.concatenate([child, leaves])
        order = np.lexsort((tok, parent))
        parent, tok, child = parent[order], tok[order], child[order]
        count = np.bincount(parent, minlength=num_nodes)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(start.astype(np.int32), count.astype(np.int32), tok.astype(np.int32), child.astype(np.int32),
                   leaf.astype(np.int32), np.maximum(max_children, 1).astype(np.int32), T)

    def lookup(self, seq: np.ndarray) -> int:
        """Item of a token sequence, or -1 when it is not a valid SID."""
        v = 0
        for t in seq:
            if t == PAD and self.leaf_item[v] >= 0:
                break
            s, c = self.start[v], self.count[v]
            j = np.searchsorted(self.child_token[s:s + c], t)
            if j >= c or self.child_token[s + j] != t:
                return -1
            v = int(self.child_node[s + j])
        return int(self.leaf_item[v])
