"""Runs one step: the scheduled chunks through the model, then sampling and verification."""

from __future__ import annotations

import torch

from vibeserve_ray.candidate import TokenOut

from .attention import AttentionBackend
from .batch import Chunk, ForwardBatch
from .kv_cache import KVCache
from .model import LlamaForCausalLM
from .sampler import Sampler


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, attention: AttentionBackend, device: torch.device):
        self.model = model
        self.cache = cache
        self.attention = attention
        self.device = device
        self.sampler = Sampler()

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> list[list[TokenOut]]:
        """New tokens per chunk (none for a partial prefill, several for accepted drafts)."""
        batch = ForwardBatch(chunks, self.cache, self.attention, self.device)
        input_ids, positions = batch.input_ids(self.device)
        hidden = self.model(input_ids, positions, batch)
        rows = batch.logits_rows()
        if not rows:
            return [[] for _ in chunks]
        if len(rows) < batch.num_tokens:  # only rows that sample pay for the vocabulary projection
            hidden = hidden[torch.tensor(rows, device=self.device)]
        logits = self.model.compute_logits(hidden)
        return self.sampler(logits, chunks)
