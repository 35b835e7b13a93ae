"""Runs one step: the scheduled chunks through the model, then sampling and verification."""

from __future__ import annotations

import torch
from torch import nn

from vibeserve_ray.candidate import TokenOut

from ..layers.attention import AttentionBackend
from .batch import ForwardBatch
from .graph import GraphForward
from .kv_cache import KVCache
from .sampler import Sampler
from .sequence import Chunk


class ModelRunner:
    def __init__(self, model: nn.Module, cache: KVCache, attention: AttentionBackend, device: torch.device, compile_graph: bool = False):
        self.model = model
        # the forward and the vocabulary projection: the model's own, or one compiled graph each (compile = graph)
        self.forward = GraphForward(model) if compile_graph else model
        self.compute_logits = self.forward.compute_logits
        self.cache = cache
        self.attention = attention
        self.device = device
        self.sampler = Sampler()

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> tuple[list[list[TokenOut]], list[list[TokenOut]]]:
        """Per chunk: the prompt tokens it scored (only for requests asking for prompt
        logprobs), and its new tokens (none for a partial prefill, several for accepted drafts)."""
        batch = ForwardBatch(chunks, self.cache, self.attention, self.device)
        input_ids, positions = batch.input_ids(self.device)
        hidden = self.forward(input_ids, positions, batch)
        rows, scored = batch.logits_rows(), batch.scored_rows()
        if not rows and not scored:
            return [[] for _ in chunks], [[] for _ in chunks]
        if scored or len(rows) < batch.num_tokens:  # only rows that are read pay for the vocabulary projection
            hidden = hidden[torch.tensor(rows + scored, device=self.device)]
        logits = self.compute_logits(hidden)
        wanted = any(c.scored is not None for c in chunks)
        prompt = self.sampler.score_prompt(logits[len(rows):], chunks) if wanted else [[] for _ in chunks]
        return prompt, self.sampler(logits[:len(rows)], chunks)
