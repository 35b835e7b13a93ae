"""Where keys and values live: three designs behind one small interface.

- `dynamic` (the seed): each request owns tensors grown by concatenation, copying the
  whole cache every step; nothing bounds memory; it cannot batch.
- `slab`: one preallocated region of `max_model_len` tokens per running request (a
  slot); writes land in place, reads are views, also for a whole decode batch.
- `paged`: a pool of `block_size`-token blocks and a block table per request (vLLM's
  PagedAttention layout), so memory follows actual lengths and blocks can be shared
  (prefix caching, block_pool.py); reads gather a request's blocks.

Every cache answers, per forward step, through a `CacheStep` built from the step's
chunks: `write` the new keys/values of one layer, `read` one chunk's whole context,
`read_decode` the padded contexts of all single-token chunks at once.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import torch

from .block_pool import BlockPool

if TYPE_CHECKING:
    from ..config import EngineConfig, ModelConfig
    from .sequence import Chunk, Sequence


class KVCache:
    """Allocation side (scheduler) and step side (forward) of one cache design."""

    def room_needed(self, seq: Sequence, spec_slack: int) -> int:
        return seq.num_prompt_tokens + seq.request.max_tokens + spec_slack

    def never_fits(self, seq: Sequence, spec_slack: int) -> str | None:
        """Why this request can never be admitted (it fails at once instead of waiting forever)."""
        return None

    def allocate(self, seq: Sequence, spec_slack: int) -> bool:
        raise NotImplementedError

    def free(self, seq: Sequence) -> None:
        raise NotImplementedError

    def commit(self, seq: Sequence) -> None:
        """Called after each step that advanced `seq` (num_cached is up to date)."""

    def reuse(self, seq: Sequence) -> None:
        """Called before each prompt chunk of `seq` is scheduled: a cache that learnt a
        longer prefix of this prompt since `allocate` may move num_cached past it."""

    def step(self, chunks: list[Chunk], decode: list[int]) -> CacheStep:
        raise NotImplementedError


class CacheStep:
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [tokens of the step, kv_heads, head_dim], in chunk order."""
        raise NotImplementedError

    def read(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk i's context including its new tokens: [kv_heads, length, head_dim]."""
        raise NotImplementedError

    def read_decode(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Padded contexts [R, kv_heads, max_len, head_dim], the mask [R, 1, 1, max_len] of
        real positions, and which of the R rows belongs to each decode chunk (None: row
        i is decode chunk i)."""
        raise NotImplementedError


def _pad_mask(lengths: list[int], device: torch.device) -> torch.Tensor:
    width = max(lengths)
    return (torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None])[:, None, None, :]


def _preallocate(model: ModelConfig, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[list, list]:
    """Keys and values of `shape` for every attention layer, zeroed once up front."""
    def make() -> list[torch.Tensor]:
        return [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model.num_attention_layers)]

    return make(), make()


# --- dynamic ---------------------------------------------------------------------------


class DynamicKVCache(KVCache):
    def __init__(self, num_layers: int):
        self.num_layers = num_layers

    def allocate(self, seq: Sequence, spec_slack: int) -> bool:
        seq.kv = ([None] * self.num_layers, [None] * self.num_layers)
        seq.num_cached = 0
        return True

    def free(self, seq: Sequence) -> None:
        seq.kv = None

    def commit(self, seq: Sequence) -> None:
        keys, values = seq.kv
        if keys[0] is not None and keys[0].shape[1] > seq.num_cached:  # rejected draft tokens
            for layer in range(self.num_layers):
                keys[layer] = keys[layer][:, :seq.num_cached]
                values[layer] = values[layer][:, :seq.num_cached]

    def step(self, chunks: list[Chunk], decode: list[int]) -> CacheStep:
        return _DynamicStep(chunks, decode)


class _DynamicStep(CacheStep):
    def __init__(self, chunks: list[Chunk], decode: list[int]):
        self.chunks, self.decode = chunks, decode

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        at = 0
        for c in self.chunks:
            keys, values = c.seq.kv
            nk, nv = k[at:at + c.length].transpose(0, 1), v[at:at + c.length].transpose(0, 1)
            keys[layer] = nk if keys[layer] is None else torch.cat((keys[layer], nk), dim=1)
            values[layer] = nv if values[layer] is None else torch.cat((values[layer], nv), dim=1)
            at += c.length

    def read(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.chunks[i].seq.kv
        return keys[layer], values[layer]

    def read_decode(self, layer: int):
        ks, vs = zip(*(self.read(layer, i) for i in self.decode))
        lengths = [k.shape[1] for k in ks]
        width = max(lengths)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
        return torch.stack([pad(k) for k in ks]), torch.stack([pad(v) for v in vs]), _pad_mask(lengths, ks[0].device), None


# --- slab ------------------------------------------------------------------------------


class SlabKVCache(KVCache):
    """One contiguous `max_model_len` region per slot, stored [slots, kv_heads, max_len,
    head_dim] per layer: a request's context is a view, and a decode batch attends over
    the leading slots as one strided view with a length mask instead of gathering its
    contexts (the gather was 15% of a batch-16 decode step on CPU)."""

    def __init__(self, model: ModelConfig, config: EngineConfig, device: torch.device, dtype: torch.dtype):
        self.num_slots = 1 if config.scheduler == "serial" else config.max_num_seqs
        self.max_len = config.max_model_len
        shape = (self.num_slots, model.num_key_value_heads, self.max_len, model.head_dim)
        self.keys, self.values = _preallocate(model, shape, device, dtype)
        self.device = device
        self.free_slots = list(range(self.num_slots))  # a heap: lowest first keeps the busy slots leading

    def never_fits(self, seq: Sequence, spec_slack: int) -> str | None:
        need = self.room_needed(seq, spec_slack)
        return f"prompt + max_tokens needs {need} tokens, more than max_model_len {self.max_len}" if need > self.max_len else None

    def allocate(self, seq: Sequence, spec_slack: int) -> bool:
        if not self.free_slots:
            return False
        seq.slot = heapq.heappop(self.free_slots)
        seq.num_cached = 0
        return True

    def free(self, seq: Sequence) -> None:
        if seq.slot is not None:
            heapq.heappush(self.free_slots, seq.slot)
            seq.slot = None

    def step(self, chunks: list[Chunk], decode: list[int]) -> CacheStep:
        return _SlabStep(self, chunks, decode)

    def copy_out(self, seq: Sequence, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of `seq`'s keys and values at positions [start, end): [layers, kv_heads, n, head_dim]."""
        return (torch.stack([k[seq.slot, :, start:end] for k in self.keys]), torch.stack([v[seq.slot, :, start:end] for v in self.values]))

    def copy_in(self, seq: Sequence, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Writes `copy_out`'s keys and values into `seq`'s slot from position `start`."""
        end = start + keys.shape[2]
        for layer, (k, v) in enumerate(zip(keys, values)):
            self.keys[layer][seq.slot, :, start:end].copy_(k)
            self.values[layer][seq.slot, :, start:end].copy_(v)


class _SlabStep(CacheStep):
    def __init__(self, cache: SlabKVCache, chunks: list[Chunk], decode: list[int]):
        self.cache, self.chunks = cache, chunks
        dev = cache.device
        self.write_at = (torch.tensor([c.seq.slot for c in chunks for _ in range(c.length)], device=dev),
                         torch.tensor([p for c in chunks for p in range(c.start, c.end)], device=dev))
        if decode:
            # every slot below the highest decoding one takes part; idle ones see one
            # (stale) position so their softmax stays finite, and their rows are dropped
            slots = [chunks[i].seq.slot for i in decode]
            lengths = [1] * (max(slots) + 1)
            for i, slot in zip(decode, slots):
                lengths[slot] = chunks[i].end
            self.decode_rows = torch.tensor(slots, device=dev)
            self.decode_view = (slice(0, len(lengths)), slice(None), slice(0, max(lengths)))
            self.mask = _pad_mask(lengths, dev)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        slots, positions = self.write_at
        self.cache.keys[layer][slots, :, positions] = k
        self.cache.values[layer][slots, :, positions] = v

    def read(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.chunks[i]
        return self.cache.keys[layer][c.seq.slot, :, :c.end], self.cache.values[layer][c.seq.slot, :, :c.end]

    def read_decode(self, layer: int):
        return self.cache.keys[layer][self.decode_view], self.cache.values[layer][self.decode_view], self.mask, self.decode_rows


# --- paged -----------------------------------------------------------------------------


class PagedKVCache(KVCache):
    """Storage [kv_heads, num_kv_blocks * block_size, head_dim] per layer, addressed by
    flat slot numbers; a request's positions map to slots through its block table."""

    def __init__(self, model: ModelConfig, config: EngineConfig, device: torch.device, dtype: torch.dtype):
        self.pool = BlockPool(config.num_kv_blocks, config.block_size, config.prefix_cache)
        self.block_size = config.block_size
        shape = (model.num_key_value_heads, config.num_kv_blocks * config.block_size, model.head_dim)
        self.keys, self.values = _preallocate(model, shape, device, dtype)
        self.device = device

    def never_fits(self, seq: Sequence, spec_slack: int) -> str | None:
        need = self.pool.blocks_for(self.room_needed(seq, spec_slack))
        return f"needs {need} KV blocks, the pool has {self.pool.num_blocks}" if need > self.pool.num_blocks else None

    def allocate(self, seq: Sequence, spec_slack: int) -> bool:
        return self.pool.allocate(seq, self.room_needed(seq, spec_slack))

    def free(self, seq: Sequence) -> None:
        self.pool.release(seq)

    def commit(self, seq: Sequence) -> None:
        self.pool.commit(seq)

    def step(self, chunks: list[Chunk], decode: list[int]) -> CacheStep:
        return _PagedStep(self, chunks, decode)

    def slots(self, seq: Sequence, end: int) -> torch.Tensor:
        """Slot numbers of positions [0, end) of `seq`."""
        table = torch.tensor(seq.block_table, device=self.device)
        pos = torch.arange(end, device=self.device)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


class _PagedStep(CacheStep):
    def __init__(self, cache: PagedKVCache, chunks: list[Chunk], decode: list[int]):
        self.cache = cache
        self.context = [cache.slots(c.seq, c.end) for c in chunks]  # every chunk's whole context
        self.write_slots = torch.cat([ctx[c.start:] for ctx, c in zip(self.context, chunks)])
        if len(decode) > 1:
            lengths = [chunks[i].end for i in decode]
            width = max(lengths)
            self.decode_slots = torch.stack([torch.nn.functional.pad(self.context[i], (0, width - chunks[i].end)) for i in decode]).flatten()
            self.decode_shape = (len(decode), width)
            self.mask = _pad_mask(lengths, cache.device)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cache.keys[layer].index_copy_(1, self.write_slots, k.transpose(0, 1))
        self.cache.values[layer].index_copy_(1, self.write_slots, v.transpose(0, 1))

    def read(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        slots = self.context[i]
        return self.cache.keys[layer].index_select(1, slots), self.cache.values[layer].index_select(1, slots)

    def read_decode(self, layer: int):
        b, width = self.decode_shape
        k = self.cache.keys[layer].index_select(1, self.decode_slots)
        v = self.cache.values[layer].index_select(1, self.decode_slots)
        heads, dim = k.shape[0], k.shape[2]
        return k.view(heads, b, width, dim).transpose(0, 1), v.view(heads, b, width, dim).transpose(0, 1), self.mask, None


def make_kv_cache(model: ModelConfig, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> KVCache:
    if config.kv_cache == "dynamic":
        return DynamicKVCache(model.num_attention_layers)
    if config.kv_cache == "slab":
        return SlabKVCache(model, config, device, dtype)
    return PagedKVCache(model, config, device, dtype)
