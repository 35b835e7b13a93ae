"""Runs the model for the scheduled sequences and samples their next tokens."""

from __future__ import annotations

import torch

from vibeserve_ray.candidate import TokenOut

from .model import LlamaForCausalLM
from .sampler import Sampler
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, device: torch.device):
        self.model = model
        self.device = device
        self.sampler = Sampler()

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> list[TokenOut]:
        """One forward per sequence (the seed does not batch), then one sampling pass."""
        logits = torch.cat([self.forward(seq) for seq in seqs])
        return self.sampler(logits, seqs)

    def forward(self, seq: Sequence) -> torch.Tensor:
        """Feeds the tokens the cache has not seen (the prompt at first, then the last
        token) and returns logits [1, vocab] for the next position."""
        start = seq.kv_cache.length
        input_ids = torch.tensor(seq.token_ids[start:], device=self.device)
        positions = torch.arange(start, len(seq.token_ids), device=self.device)
        hidden = self.model(input_ids, positions, seq.kv_cache)
        return self.model.compute_logits(hidden[-1:])
