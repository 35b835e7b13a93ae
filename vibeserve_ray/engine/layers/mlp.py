"""The SiLU-gated MLP (SwiGLU) of Llama-family and Olmo-family layers alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import PackedLinear


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up as one matmul (`gate_up_proj`, packed at
    load from the checkpoint's gate_proj and up_proj)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = PackedLinear(hidden_size, {"gate_proj": intermediate_size, "up_proj": intermediate_size})
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
