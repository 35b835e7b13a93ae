"""Turns logits into tokens by the contract's fixed sampling rule, and verifies drafts.

Step t of a request (t = tokens generated so far) draws its noise from (seed, t), so a
seeded request gets the same tokens whatever else is in the batch; temperature 0 makes
the rule an argmax (greedy). A draft token is kept only when it equals what the rule
picks at its position, which keeps speculative outputs identical to plain decoding.
"""

from __future__ import annotations

import torch

from vibeserve_ray.candidate import TokenOut, sample_token

from .batch import Chunk


class Sampler:
    def __call__(self, logits: torch.Tensor, chunks: list[Chunk]) -> list[list[TokenOut]]:
        """logits: the rows of every chunk that needs them, in order -> tokens per chunk."""
        logits = logits.float()
        greedy_rows = logits.argmax(-1).tolist()
        outs, row = [], 0
        for chunk in chunks:
            tokens: list[TokenOut] = []
            seq, r = chunk.seq, chunk.seq.request
            logprobs = torch.log_softmax(logits[row:row + chunk.num_logits], -1) if r.want_logprobs and chunk.num_logits else None
            for j in range(chunk.num_logits):
                if r.temperature <= 0:
                    token = greedy_rows[row + j]
                else:
                    token = sample_token(logits[row + j], r.temperature, r.top_p, seq.seed, seq.num_completion_tokens + j)
                tokens.append(TokenOut(token, None if logprobs is None else float(logprobs[j, token])))
                done = seq.num_completion_tokens + j + 1 >= r.max_tokens or token in r.stop_token_ids
                if done or j >= len(chunk.draft) or token != chunk.draft[j]:
                    break
            row += chunk.num_logits
            outs.append(tokens)
        return outs
