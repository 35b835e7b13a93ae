"""Turns logits into tokens by the contract's fixed sampling rule, and verifies drafts.

Step t of a request (t = tokens generated so far) draws its noise from (seed, t), so a
seeded request gets the same tokens whatever else is in the batch; temperature 0 makes
the rule an argmax (greedy). A draft token is kept only when it equals what the rule
picks at its position, which keeps speculative outputs identical to plain decoding.
A constrained request (`response_format`) picks among the tokens its grammar allows
(grammar.constrain) and ends when the grammar accepts a stop token.
"""

from __future__ import annotations

import torch

from vibeserve_ray.candidate import TokenOut, sample_token

from .grammar import constrain
from .sequence import Chunk


class Sampler:
    def __call__(self, logits: torch.Tensor, chunks: list[Chunk]) -> list[list[TokenOut]]:
        """logits: the rows of every chunk that needs them, in order -> tokens per chunk."""
        if any(c.seq.grammar is not None or c.seq.request.temperature > 0 or c.seq.request.want_logprobs for c in chunks):
            logits = logits.float()
        scores = constrain(logits, chunks) if any(c.seq.grammar is not None for c in chunks) else logits
        # max's indices: the first maximum, as argmax's, at under half its cost on a 49k
        # vocabulary; on the model's own dtype, since widening to float32 keeps the order
        greedy_rows = scores.max(-1).indices.tolist()
        outs, row = [], 0
        for chunk in chunks:
            tokens: list[TokenOut] = []
            seq, r = chunk.seq, chunk.seq.request
            logprobs = torch.log_softmax(logits[row:row + chunk.num_logits], -1) if r.want_logprobs and chunk.num_logits else None
            for j in range(chunk.num_logits):
                if r.temperature <= 0:
                    token = greedy_rows[row + j]
                else:
                    token = sample_token(scores[row + j], r.temperature, r.top_p, seq.seed, seq.num_completion_tokens + j)
                tokens.append(TokenOut(token) if logprobs is None else _scored(token, logprobs[j], r.top_logprobs))
                if seq.grammar is not None and not seq.grammar.accept_token(token):
                    raise RuntimeError(f"grammar refused token {token} that its own mask allowed")
                done = seq.num_completion_tokens + j + 1 >= r.max_tokens or token in r.stop_token_ids or seq.grammar_done
                if done or j >= len(chunk.draft) or token != chunk.draft[j]:
                    break
            row += chunk.num_logits
            outs.append(tokens)
        return outs

    def score_prompt(self, logits: torch.Tensor, chunks: list[Chunk]) -> list[list[TokenOut]]:
        """logits: the rows of `Chunk.scored` of every chunk, in order -> the prompt
        tokens each chunk scores (its first chunk also gives the first token, unscored)."""
        logprobs = torch.log_softmax(logits.float(), -1)
        outs, row = [], 0
        for chunk in chunks:
            seq, k = chunk.seq, chunk.seq.request.top_logprobs
            tokens = [TokenOut(seq.token_ids[0])] if chunk.scored is not None and chunk.start == 0 else []
            for position in chunk.scored or ():
                tokens.append(_scored(seq.token_ids[position], logprobs[row], k))
                row += 1
            outs.append(tokens)
        return outs


def _scored(token: int, logprobs: torch.Tensor, top: int) -> TokenOut:
    """`token` with its logprob from one row, and the row's `top` best alternatives."""
    if not top:
        return TokenOut(token, float(logprobs[token]))
    values, ids = torch.topk(logprobs, top)
    return TokenOut(token, float(logprobs[token]), tuple(zip(ids.tolist(), values.tolist())))
