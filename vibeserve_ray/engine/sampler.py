"""Turns each sequence's logits into its next token, by the contract's fixed sampling rule."""

from __future__ import annotations

import torch

from vibeserve_ray.candidate import TokenOut, sample_token

from .sequence import Sequence


class Sampler:
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[TokenOut]:
        """logits [len(seqs), vocab]. Step t of a request (t = tokens generated so far) draws
        its noise from (seed, t), so tokens do not depend on what else is in the batch."""
        outs = []
        for row, seq in zip(logits.float(), seqs):
            r = seq.request
            # temperature 0 makes sample_token an argmax of the raw logits (greedy)
            token = sample_token(row, r.temperature, r.top_p, seq.seed, seq.num_completion_tokens)
            logprob = float(torch.log_softmax(row, dim=-1)[token]) if r.want_logprobs else None
            outs.append(TokenOut(token, logprob))
        return outs
