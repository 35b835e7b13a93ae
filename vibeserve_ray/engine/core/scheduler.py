"""Which tokens of which requests run in the next step (`design.scheduler`).

- `serial` (the seed): one request at a time, first come first served; while it
  decodes, every other request waits. The baseline a search must beat.
- `static`: waits up to `batch_wait_ms` to gather up to `max_num_seqs` requests, then
  runs that batch to completion; newcomers wait for the whole batch.
- `continuous`: every step admits what fits (`max_num_seqs`, KV capacity), decodes
  every running request, and spends the rest of a `max_num_batched_tokens` budget on
  prompts, in chunks (chunked prefill), so long prompts never stall decodes.

All three hand the model runner a list of `Chunk`s; speculation, when on, adds draft
tokens to decode chunks.
"""

from __future__ import annotations

import time
from collections import deque

from vibeserve_ray.candidate import TokenOut

from ..config import EngineConfig
from . import speculation
from .kv_cache import KVCache
from .sequence import Chunk, Sequence, Status


class Scheduler:
    """Touched only by the engine's step thread, so it needs no locks."""

    def __init__(self, cache: KVCache, config: EngineConfig):
        self.cache = cache
        self.config = config
        self.spec_slack = config.spec_k if config.speculation != "off" else 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> str | None:
        """Queues `seq`, or says why it can never run (the caller fails it)."""
        if (why := self.cache.never_fits(seq, self.spec_slack)) is not None:
            return why
        seq.arrived = time.monotonic()
        self.waiting.append(seq)
        return None

    def is_idle(self) -> bool:
        return not self.waiting and not self.running

    def wait_hint(self) -> float | None:
        """Seconds the step thread may sleep for new arrivals when nothing was scheduled."""
        return None

    def schedule(self) -> list[Chunk]:
        for seq in [s for s in (*self.waiting, *self.running) if s.aborted]:
            self.finish(seq)
        return self._schedule()

    def _schedule(self) -> list[Chunk]:
        raise NotImplementedError

    def _admit(self, limit: int) -> None:
        while self.waiting and len(self.running) < limit and self.cache.allocate(self.waiting[0], self.spec_slack):
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)

    def _chunk(self, seq: Sequence, budget: int | None = None) -> Chunk:
        """The next chunk of `seq`: its pending tokens (at most `budget`), plus a draft when decoding."""
        decoding = seq.num_cached >= seq.num_prompt_tokens
        if not decoding:
            self.cache.reuse(seq)
        pending = seq.pending if budget is None else seq.pending[:max(budget, 1)]
        draft = speculation.propose(seq, self.config.speculation, self.config.spec_k, self.config.spec_ngram) if decoding and self.config.speculation != "off" else []
        return Chunk(seq, seq.num_cached, pending, draft)

    def postprocess(self, chunks: list[Chunk], outs: list[list[TokenOut]]) -> list[Sequence]:
        """Advances each sequence past its chunk; returns the ones that just finished."""
        finished = []
        for chunk, tokens in zip(chunks, outs):
            seq = chunk.seq
            # the cache holds the real tokens fed plus the drafts the sampler confirmed
            seq.num_cached = chunk.start + len(chunk.token_ids) + max(len(tokens) - 1, 0)
            if chunk.draft:
                speculation.accepted(seq, len(tokens) - 1)
            seq.token_ids.extend(t.token_id for t in tokens)
            self.cache.commit(seq)
            if tokens and seq.is_done:
                self.finish(seq)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence) -> None:
        """Takes `seq` out of the queues and frees its cache (done, aborted or failed)."""
        if seq in self.running:
            self.running.remove(seq)
            self.cache.free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def all_sequences(self) -> list[Sequence]:
        return [*self.waiting, *self.running]


class SerialScheduler(Scheduler):
    def _schedule(self) -> list[Chunk]:
        self._admit(1)
        return [self._chunk(seq) for seq in self.running]


class StaticScheduler(Scheduler):
    def _gathered(self) -> bool:
        waited = time.monotonic() - self.waiting[0].arrived
        return len(self.waiting) >= self.config.max_num_seqs or waited * 1000 >= self.config.batch_wait_ms

    def wait_hint(self) -> float | None:
        if self.running or not self.waiting:
            return None
        return max(self.config.batch_wait_ms / 1000 - (time.monotonic() - self.waiting[0].arrived), 0.0)

    def _schedule(self) -> list[Chunk]:
        if not self.running and self.waiting and self._gathered():
            self._admit(self.config.max_num_seqs)
        return [self._chunk(seq) for seq in self.running]


class ContinuousScheduler(Scheduler):
    def _schedule(self) -> list[Chunk]:
        self._admit(self.config.max_num_seqs)
        budget = self.config.max_num_batched_tokens
        decodes = [self._chunk(s) for s in self.running if s.num_cached >= s.num_prompt_tokens]
        budget -= sum(c.length for c in decodes)
        prefills = []
        for seq in self.running:  # oldest first: finish started prompts before starting new ones
            if seq.num_cached < seq.num_prompt_tokens and budget > 0:
                prefills.append(chunk := self._chunk(seq, budget))
                budget -= chunk.length
        return decodes + prefills


def make_scheduler(cache: KVCache, config: EngineConfig) -> Scheduler:
    kinds = {"serial": SerialScheduler, "static": StaticScheduler, "continuous": ContinuousScheduler}
    return kinds[config.scheduler](cache, config)
