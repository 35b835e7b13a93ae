"""`compile = graph`: the model's whole forward as one torch.compile graph, and the
vocabulary projection as a second.

Inductor with freezing: the weights become constants, so it packs every linear layer
itself and fuses the small ops between them (norms, rotary, SiLU-gating, residual adds)
into a few C++ loops; one graph call per step replaces ~25 Python-dispatched ops per
layer. With max-autotune and its C++ GEMM templates, inductor times its own AMX/AVX-512
matmul kernels (which take the fused ops as epilogues) against oneDNN's for each linear
and keeps the faster: on a 2-core Xeon with AMX, a batch-16 decode step of the tiny Llama
went 6.2 -> 4.3 ms and the in-process serving workload 1,700 -> 2,230-2,390 output tok/s,
for ~10 s more at load. In float32 it gains nothing (in process, two threads: 903 against
1,011 tok/s without it) and costs ~40 s of every start, so only reduced precision autotunes.
What changes every step stays outside:
attention reads chunk boundaries and cache tables, so inside the graph a layer's
`batch.attend` is the opaque op `vibeserve::attend`, which finds the step's ForwardBatch in
this thread's `_step` (set around each call). The token count is the graph's one dynamic
dimension, so batch sizes do not recompile.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
import torch._inductor.config as inductor_config
from torch import nn

from .batch import ForwardBatch

_step = threading.local()  # the ForwardBatch of the forward running on this thread


@torch.library.custom_op("vibeserve::attend", mutates_args=())
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Writes k, v to the cache and attends: ForwardBatch.attend, opaque to the compiler."""
    return _step.batch.attend(layer, q, k, v)


@attend.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    return torch.empty_like(q)


class _InGraph:
    """What a layer sees as its batch while being traced: only `attend`, as the op."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attend(q, k, v, layer)


IN_GRAPH = _InGraph()


# Inductor's `freezing` (weights as constants: it packs the linears and folds what depends
# only on them); for reduced-precision weights, max-autotune over ATen's and its own C++ matmul kernels.
FREEZING = {"freezing": True}
AUTOTUNED = FREEZING | {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


@contextlib.contextmanager
def _compile_settings(settings: dict[str, object]) -> Iterator[None]:
    """Inductor's `settings` for the graphs compiled inside. Set around each call, since a
    call may compile (a new shape), and restored after: process-wide switches would reach
    other engines' graphs too. torch.compile's `options` does not reach freezing;
    `config.patch` costs ~100 us a call, setting the attributes ~9 each."""
    before = {name: getattr(inductor_config, name) for name in settings}
    for name, value in settings.items():
        setattr(inductor_config, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(inductor_config, name, value)


class GraphForward:
    """Stands in for a model's `forward` and `compute_logits` (ModelRunner calls both)."""

    def __init__(self, model: nn.Module):
        if not hasattr(model, "model") or not hasattr(model, "lm_head"):
            raise ValueError("design.compile = 'graph' needs a model with a decoder stack and an lm_head (the Llama family)")
        self.settings = AUTOTUNED if model.lm_head.weight.dtype in (torch.bfloat16, torch.float16) else FREEZING
        self.decoder = torch.compile(model.model, dynamic=True)
        self.lm_head: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model.lm_head, dynamic=True)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        _step.batch = batch
        try:
            with _compile_settings(self.settings):
                return self.decoder(input_ids, positions, IN_GRAPH)
        finally:
            _step.batch = None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with _compile_settings(self.settings):
            return self.lm_head(hidden)
