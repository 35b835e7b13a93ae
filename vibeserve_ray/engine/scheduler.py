"""Which requests run in the next step: the seed serves one at a time, first come first served.

This is the baseline a search must beat: while a request decodes, every other one
waits. A batching scheduler returns several sequences from `schedule`.
"""

from __future__ import annotations

from collections import deque

from vibeserve_ray.candidate import TokenOut

from .kv_cache import KVCacheManager
from .sequence import Sequence, Status


class Scheduler:
    """Touched only by the engine's step thread, so it needs no locks."""

    def __init__(self, kv_cache: KVCacheManager):
        self.kv_cache = kv_cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def is_idle(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> list[Sequence]:
        """The sequences to advance by one token: the running one, else the oldest waiting."""
        for seq in [s for s in (*self.waiting, *self.running) if s.aborted]:
            self.finish(seq)
        if not self.running and self.waiting:
            seq = self.waiting.popleft()
            self.kv_cache.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
        return list(self.running)

    def postprocess(self, seqs: list[Sequence], outs: list[TokenOut]) -> list[Sequence]:
        """Records each sampled token; returns the sequences that just finished."""
        finished = []
        for seq, out in zip(seqs, outs):
            seq.append(out.token_id)
            if seq.is_done:
                self.finish(seq)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence) -> None:
        """Takes `seq` out of the queues and frees its cache (done, aborted or failed)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self.kv_cache.free(seq)

    def all_sequences(self) -> list[Sequence]:
        return [*self.waiting, *self.running]
