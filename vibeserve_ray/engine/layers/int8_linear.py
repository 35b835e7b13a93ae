"""Weight-only int8 linear layers (`design.linear = int8`, with `dtype = bfloat16`).

Each bias-free projection keeps its weight as int8 with one scale per output row
(symmetric absmax / 127) and multiplies with `aten._weight_int8pack_mm`, torch's one CPU
kernel that reads int8 weights without dequantising the whole matrix each call. It
takes bfloat16 activations (its float32-activation path is a scalar loop, 10-30x slower
than float32 MKL). Measured on a 2-core AMX CPU, every projection of the tiny Llama, one
thread: 3.4x float32 MKL at batch 1, 1.3x at 16, 0.5-0.7x at 64-256 (it is a small-batch
kernel): the engine at batch 16 ran at 1.07x float32, half of bfloat16 + oneDNN. Quantised
after loading, so the scales follow the packed qkv / gate_up rows. Not exact: the
target's accuracy contract decides whether int8 weights are acceptable (its tier).
"""

from __future__ import annotations

import torch
from torch import nn


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight [out, in], float32 scales [out]), symmetric per output channel."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    """A bias-free `nn.Linear` with int8 weights and per-output-channel scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize(linear.weight)
        self.register_buffer("qweight", q, persistent=False)
        self.register_buffer("scales", scales.to(linear.weight.dtype), persistent=False)  # the kernel wants the activations' dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)


def quantize_linears(model: nn.Module) -> None:
    """Replaces every linear layer of the loaded `model` (lm_head included) by its int8
    copy; a tied embedding keeps its own bfloat16 weight."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            if module.bias is not None or module.weight.dtype != torch.bfloat16:
                raise ValueError(f"design.linear = 'int8' quantises bias-free bfloat16 layers; {name} is not one")
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, Int8Linear(module))
