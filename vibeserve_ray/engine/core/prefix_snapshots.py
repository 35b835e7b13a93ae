"""Prefix reuse for hybrid models: snapshots of the state at block boundaries.

Paged-KV prefix caching (block_pool.py) shares a prompt's leading blocks because a
block's keys and values depend only on the tokens up to it. A linear-attention layer
has no per-token entries to share: its state at position b is one fixed-size summary of
positions [0, b), and it cannot be rewound. So while a prompt is prefilled, the state is
copied out at every block boundary b (conv inputs + recurrent matrix per linear layer,
~1 MB for the tiny model), next to the attention layers' keys and values of the block
ending at b. A later prompt that shares the first b tokens loads the deepest such
snapshot and prefills only from b on (state_cache.StateCache.reuse).

Names are digests chained over the tokens of every block up to the boundary, seeded
with the checkpoint's identity: equal names mean equal prefixes under equal weights, so
a store that outlives one model (or a snapshot shipped with a candidate) never resumes
a request from another checkpoint's state.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearState:
    """The linear layers' state after some position: conv [layers, conv_dim, K-1] (the
    last K-1 inputs) and recurrent [layers, Hv, dk, dv] (float32)."""

    conv: torch.Tensor
    recurrent: torch.Tensor


@dataclass(frozen=True)
class Snapshot:
    """The block ending at a boundary: its attention keys/values [attention layers,
    kv_heads, block, d] and the linear layers' state at its end."""

    keys: torch.Tensor
    values: torch.Tensor
    state: LinearState


class PrefixSnapshots:
    def __init__(self, identity: str, block_size: int, capacity: int):
        self.root = hashlib.blake2b(identity.encode(), digest_size=16).digest()
        self.block_size, self.capacity = block_size, capacity
        self.entries: OrderedDict[bytes, Snapshot] = OrderedDict()  # least recently used first
        self.hit_tokens = 0  # prompt tokens not recomputed thanks to a snapshot

    def names(self, token_ids: list[int]) -> list[bytes]:
        """Chained names of the full blocks of `token_ids`."""
        names, h = [], self.root
        for i in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            h = hashlib.blake2b(h + array.array("q", token_ids[i:i + self.block_size]).tobytes(), digest_size=16).digest()
            names.append(h)
        return names

    def match(self, names: list[bytes]) -> list[Snapshot]:
        """The snapshots of the longest run of `names` held, from the first block on; the
        run is marked recently used, its head most (evicted after the tails)."""
        run = []
        for name in names:
            if (entry := self.entries.get(name)) is None:
                break
            run.append((name, entry))
        for name, _ in reversed(run):
            self.entries.move_to_end(name)
        return [entry for _, entry in run]

    def __contains__(self, name: bytes) -> bool:
        return name in self.entries

    def put(self, name: bytes, snapshot: Snapshot) -> None:
        """Keeps `snapshot` (an identical one computed concurrently keeps the first), evicting the least recently used."""
        self.entries.setdefault(name, snapshot)
        self.entries.move_to_end(name)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
