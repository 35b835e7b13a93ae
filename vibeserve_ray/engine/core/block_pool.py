"""The paged cache's block pool: block tables, reference counts and prefix caching.

A request reserves every block it can need when admitted (prompt + max_tokens +
speculation slack), so a running request never waits for memory and nothing is
preempted; the pool bounds how many requests run at once instead.

Prefix caching (vLLM's automatic prefix caching, simplified): a full block of prompt
tokens is named by a hash chained over every token before it, so equal hashes mean
equal prefixes. Blocks whose last user leaves keep their contents and their hash and
sit in an LRU list; a later request with the same prefix takes them back instead of
recomputing them, and allocation evicts the least recently used only when no never-
used block is left.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sequence import Sequence


def block_hashes(token_ids: list[int], block_size: int, limit: int) -> list[int]:
    """Chained hashes of the full blocks among the first `limit` tokens."""
    hashes, h = [], 0
    for i in range(0, limit - block_size + 1, block_size):
        h = hash((h, tuple(token_ids[i:i + block_size])))
        hashes.append(h)
    return hashes


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.free: deque[int] = deque(range(num_blocks))  # never used, or evicted
        self.ref = [0] * num_blocks
        self.hash_of: dict[int, int] = {}
        self.by_hash: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses, oldest first
        self.hit_tokens = 0  # prompt tokens served from the cache (for the evaluator's hints)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Gives `seq` a block table covering `num_tokens`, reusing cached prefix blocks;
        False (and no change) when the pool cannot hold it now."""
        matched = self._match(seq) if self.prefix_caching else []
        need = self.blocks_for(num_tokens) - len(matched)
        reclaimable = len(self.lru) - sum(1 for b in matched if b in self.lru)
        if need > len(self.free) + reclaimable:
            return False
        for b in matched:
            self.lru.pop(b, None)
            self.ref[b] += 1
        seq.block_table = matched + [self._take() for _ in range(need)]
        seq.num_cached = len(matched) * self.block_size
        seq.num_hashed_blocks = len(matched)
        self.hit_tokens += seq.num_cached
        return True

    def _match(self, seq: Sequence) -> list[int]:
        # The last prompt token is always computed: its logits start the answer. A request
        # that wants its prompt's logprobs computes every prompt token (as vLLM does).
        if seq.request.prompt_logprobs:
            return []
        matched = []
        for h in block_hashes(seq.token_ids, self.block_size, seq.num_prompt_tokens - 1):
            if (b := self.by_hash.get(h)) is None:
                break
            matched.append(b)
        return matched

    def _take(self) -> int:
        if self.free:
            b = self.free.popleft()
        else:
            b, _ = self.lru.popitem(last=False)
            del self.by_hash[self.hash_of.pop(b)]
        self.ref[b] = 1
        return b

    def commit(self, seq: Sequence) -> None:
        """Names the prompt blocks `seq` has finished computing, so later requests can share them."""
        if not self.prefix_caching:
            return
        full = min(seq.num_cached, seq.num_prompt_tokens) // self.block_size
        if full <= seq.num_hashed_blocks:
            return
        hashes = block_hashes(seq.token_ids, self.block_size, full * self.block_size)
        for i in range(seq.num_hashed_blocks, full):
            b, h = seq.block_table[i], hashes[i]
            if h not in self.by_hash:  # an identical block computed concurrently keeps the first name
                self.by_hash[h] = b
                self.hash_of[b] = h
        seq.num_hashed_blocks = full

    def release(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):  # tail blocks first into the LRU: evicted before the shared head
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if b in self.hash_of:
                    self.lru[b] = None
                else:
                    self.free.append(b)
        seq.block_table = []
