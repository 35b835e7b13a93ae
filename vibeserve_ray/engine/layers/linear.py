"""Projections packed at load time: one matmul where the checkpoint has several.

A small-batch decode step on CPU pays per op, not per FLOP, so projections of the same
input (q/k/v, gate/up) run as one matmul over their weights stacked by row. The plain
projections are `nn.Linear`; `onednn_linear.py` repacks any of them for oneDNN.
"""

from __future__ import annotations

from torch import nn


class PackedLinear(nn.Linear):
    """Several bias-free projections of the same input stacked as one weight. `shards`
    names each as the checkpoint does, with its output size, in row order: the loader
    fills each row block from the checkpoint tensor of that name."""

    def __init__(self, in_features: int, shards: dict[str, int]):
        super().__init__(in_features, sum(shards.values()), bias=False)
        self.shards = shards
