"""Runs one step: the scheduled chunks through the model, then sampling and verification."""

from __future__ import annotations

import torch
from torch import nn

from vibeserve_ray.candidate import GenerationRequest, TokenOut

from ..layers.attention import AttentionBackend
from .batch import ForwardBatch, padded_rows
from .kv_cache import KVCache
from .sampler import Sampler
from .sequence import Chunk, Sequence


class ModelRunner:
    def __init__(self, model: nn.Module, cache: KVCache, attention: AttentionBackend, device: torch.device, compile_graph: bool = False,
                 pad: bool = False):
        """`pad`: run each step at a padded row count (batch.padded_rows), for linears that
        build a kernel per row count; only for models whose token mixing is all attention."""
        self.model = model
        self.pad = pad
        # the forward and the vocabulary projection: the model's own, or one compiled graph each (compile = graph)
        self.forward = model
        if compile_graph:  # imported here: torch._dynamo takes ~1.2 s to import, on every engine start that has no use for it
            from .graph import GraphForward

            self.forward = GraphForward(model)
        self.compute_logits = self.forward.compute_logits
        self.cache = cache
        self.attention = attention
        self.device = device
        self.sampler = Sampler()

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> tuple[list[list[TokenOut]], list[list[TokenOut]]]:
        """Per chunk: the prompt tokens it scored (only for requests asking for prompt
        logprobs), and its new tokens (none for a partial prefill, several for accepted drafts)."""
        batch = ForwardBatch(chunks, self.cache, self.attention, self.device, self.pad)
        input_ids, positions = batch.input_ids(self.device)
        hidden = self.forward(input_ids, positions, batch)
        rows, scored = batch.logits_rows(), batch.scored_rows()
        if not rows and not scored:
            return [[] for _ in chunks], [[] for _ in chunks]
        if scored or len(rows) < batch.num_rows:  # only rows that are read pay for the vocabulary projection
            hidden = hidden[torch.tensor(rows + scored, device=self.device)]
        logits = self.compute_logits(hidden)
        wanted = any(c.scored is not None for c in chunks)
        prompt = self.sampler.score_prompt(logits[len(rows):], chunks) if wanted else [[] for _ in chunks]
        return prompt, self.sampler(logits[:len(rows)], chunks)

    def warm_up(self, max_tokens: int) -> int:
        """Runs one forward at each padded row count up to `max_tokens` (a dummy prompt in a
        cache slot, freed after), so each count's kernels exist before the first request
        (and a compiled graph is compiled). Returns how many counts ran."""
        ran = 0
        for n in sorted({padded_rows(tokens) for tokens in range(1, max_tokens + 1)}):
            seq = Sequence(GenerationRequest(prompt_token_ids=[0] * n, max_tokens=1), 0)
            if self.cache.never_fits(seq, 0) is not None or not self.cache.allocate(seq, 0):
                break
            try:
                self.run([Chunk(seq, 0, list(seq.token_ids))])
                ran += 1
            finally:
                self.cache.free(seq)
        return ran
