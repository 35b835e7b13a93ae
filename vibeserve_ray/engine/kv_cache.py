"""The seed's KV cache: each request owns tensors that grow by one token per step.

Simple on purpose: every decode step concatenates, copying the whole cache (quadratic
bytes moved over a request), and nothing bounds memory. A preallocated or paged cache
is the obvious next design; `KVCacheManager` is where it plugs in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .sequence import Sequence


class DynamicKVCache:
    """One request's keys and values per layer, each [kv_heads, tokens, head_dim]."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Tokens cached so far (read between forwards, when all layers agree)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends this step's k, v to `layer` and returns the layer's whole cache."""
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
        else:
            self.keys[layer] = torch.cat((self.keys[layer], k), dim=1)
            self.values[layer] = torch.cat((self.values[layer], v), dim=1)
        return self.keys[layer], self.values[layer]


class KVCacheManager:
    """Hands caches to admitted requests and takes them back (nano-vllm's BlockManager role).

    Dynamic caches have no capacity to run out of, so admission never waits here.
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers

    def allocate(self, seq: Sequence) -> None:
        seq.kv_cache = DynamicKVCache(self.num_layers)

    def free(self, seq: Sequence) -> None:
        seq.kv_cache = None
