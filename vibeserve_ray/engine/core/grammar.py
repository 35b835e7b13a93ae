"""Constrained decoding: a request with a `response_format` decodes under its grammar's token mask.

Each such Sequence holds an xgrammar `GrammarMatcher` (its position in the grammar).
Every step the sampler asks `constrain` for the logits with the forbidden tokens of each
constrained row at -inf, then accepts the chosen tokens into the matchers; a sequence
ends when its matcher has accepted a stop token. The grammar itself comes from the
contract (`vibeserve_ray.candidate.response_grammar`), the rule the reference applies too.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from vibeserve_ray.candidate import grammar_compiler, response_grammar

from .sequence import Chunk


class Grammars:
    """Compiles a request's grammar, off the step thread. One compiler per engine, made on
    the first constrained request (importing xgrammar takes ~1.7 s on 2 cores: an engine
    that never sees one never pays); it caches compiled grammars, so a repeated schema is
    free (~10 ms to compile a small schema with 4,096 tokens)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = model_dir
        self._compiler = None
        self._lock = threading.Lock()

    def matcher(self, response_format: dict):
        """A fresh matcher for `response_format`; ValueError when the format is unusable."""
        import xgrammar as xgr  # ~1.7 s to import: only engines that see a response_format pay it

        with self._lock:
            if self._compiler is None:
                self._compiler = grammar_compiler(self.model_dir)
        return xgr.GrammarMatcher(self._compiler.compile_grammar(response_grammar(response_format)))


def constrain(logits: torch.Tensor, chunks: list[Chunk]) -> torch.Tensor:
    """`logits` (the rows of every chunk that needs them) with each constrained row masked.

    A chunk with a draft has a row per draft token, and row j's mask is the grammar's state
    after draft tokens 0..j-1: they are accepted while filling and rolled back after, so the
    sampler accepts only what it keeps. Rows after a draft token the grammar refuses are
    left unmasked: verification stops before them (the token chosen at the refused
    position is allowed, so it differs from the draft). Returns a copy: logprobs are read
    from the raw logits.
    """
    import xgrammar as xgr  # as in Grammars.matcher: loaded only once a request has a response_format

    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    rows, row = [], 0
    for chunk in chunks:
        matcher = chunk.seq.grammar
        if matcher is not None and chunk.num_logits:
            accepted = 0
            for j in range(chunk.num_logits):
                if matcher.fill_next_token_bitmask(bitmask, row + j):  # False: every token allowed
                    rows.append(row + j)
                if j == len(chunk.draft) or not matcher.accept_token(chunk.draft[j]):
                    break
                accepted += 1
                if matcher.is_terminated():  # the draft token was a stop token: nothing follows it
                    break
            if accepted:
                matcher.rollback(accepted)
        row += chunk.num_logits
    if not rows:
        return logits
    masked = logits.clone()
    xgr.apply_token_bitmask_inplace(masked, bitmask, indices=rows)
    return masked
