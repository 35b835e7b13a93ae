"""Where a hybrid model's linear-attention layers keep each request's state, beside the
KV cache of its attention layers (only those have keys and values).

Per linear layer a request holds a convolution state [conv_dim, K-1] (its last K-1
inputs) and a recurrent state [Hv, dk, dv] (float32: it sums thousands of rank-one
updates), a few hundred KB whatever the context. Where it lives follows `design.kv_cache`:

- `dynamic` (the seed): tensors made when the request is admitted and dropped when it
  ends, as its keys and values grow by concatenation;
- `slab`: one preallocated row per slab slot, [layers, slots, ...] beside the slab's KV;
  a decode batch gathers its rows and scatters them back (`state_update = gather`), or
  updates the leading slots in place (`inplace`: the gather and scatter were ~16% of a
  batch-16 decode step).

A prompt chunk runs through the delta rule in the form `design.delta_rule` names
(chunked: matmuls per 64 tokens; recurrent: token by token), continuing from the
request's state. Unlike KV, a recurrent state cannot be cut back: it has absorbed every
token fed, so a step feeds only tokens that are kept (no speculative drafts), and prefix
reuse (`prefix_cache = on`) keeps snapshots taken at block boundaries during prefill
(prefix_snapshots.py): `reuse` resumes a new prompt from the deepest one it matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..layers.gated_delta import RULES, DeltaHeads, conv_prefill, conv_step, recurrent_delta_rule, recurrent_delta_rule_
from .kv_cache import CacheStep, KVCache, SlabKVCache
from .prefix_snapshots import LinearState, PrefixSnapshots, Snapshot

if TYPE_CHECKING:
    from ..config import EngineConfig
    from .sequence import Chunk, Sequence


@dataclass(frozen=True)
class StateShape:
    """One request's state: per linear layer, conv [conv_dim, conv_width] and recurrent [Hv, dk, dv]."""

    layers: int
    conv_dim: int
    conv_width: int  # K - 1
    heads: DeltaHeads

    @classmethod
    def of(cls, config) -> StateShape:
        """From a hybrid family's config (its linear_layers, conv_dim, linear_conv_kernel_dim, delta_heads)."""
        return cls(len(config.linear_layers), config.conv_dim, config.linear_conv_kernel_dim - 1, config.delta_heads)

    def zeros(self, *lead: int, device: torch.device, dtype: torch.dtype) -> LinearState:
        h = self.heads
        return LinearState(torch.zeros(self.layers, *lead, self.conv_dim, self.conv_width, device=device, dtype=dtype),
                           torch.zeros(self.layers, *lead, h.num_v_heads, h.head_k_dim, h.head_v_dim, device=device, dtype=torch.float32))


class RequestStates:
    """`kv_cache = dynamic`: each request's own tensors (`seq.state`), made at admission."""

    def __init__(self, shape: StateShape, device: torch.device, dtype: torch.dtype):
        self.shape, self.device, self.dtype = shape, device, dtype

    def reset(self, seq: Sequence) -> None:
        seq.state = self.shape.zeros(device=self.device, dtype=self.dtype)

    def release(self, seq: Sequence) -> None:
        seq.state = None

    def of(self, layer: int, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        return seq.state.conv[layer], seq.state.recurrent[layer]

    def gather(self, layer: int, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([s.state.conv[layer] for s in seqs]), torch.stack([s.state.recurrent[layer] for s in seqs])

    def scatter(self, layer: int, seqs: list[Sequence], conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        for s, c, r in zip(seqs, conv, recurrent):
            s.state.conv[layer].copy_(c)
            s.state.recurrent[layer].copy_(r)


class SlotStates:
    """`kv_cache = slab`: row `seq.slot` of [layers, slots, ...] tensors, allocated once."""

    def __init__(self, shape: StateShape, num_slots: int, device: torch.device, dtype: torch.dtype):
        self.all = shape.zeros(num_slots, device=device, dtype=dtype)

    def reset(self, seq: Sequence) -> None:
        self.all.conv[:, seq.slot].zero_()
        self.all.recurrent[:, seq.slot].zero_()

    def release(self, seq: Sequence) -> None:
        pass

    def of(self, layer: int, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        return self.all.conv[layer, seq.slot], self.all.recurrent[layer, seq.slot]

    def gather(self, layer: int, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        slots = [s.slot for s in seqs]
        return self.all.conv[layer, slots], self.all.recurrent[layer, slots]

    def scatter(self, layer: int, seqs: list[Sequence], conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        slots = [s.slot for s in seqs]
        self.all.conv[layer, slots] = conv
        self.all.recurrent[layer, slots] = recurrent


class StateCache(KVCache):
    """The attention layers' KV cache (`kv`) with the linear layers' state beside it."""

    def __init__(self, kv: KVCache, states: RequestStates | SlotStates, shape: StateShape, delta_rule: str, in_place: bool,
                 snapshots: PrefixSnapshots | None):
        self.kv, self.states, self.shape = kv, states, shape
        self.rule, self.in_place, self.snapshots = RULES[delta_rule], in_place, snapshots
        self.pending: dict[int, dict[int, LinearState]] = {}  # seq_id -> boundary -> state captured this step
        self._names: dict[int, list[bytes]] = {}  # seq_id -> its prompt's block names

    def never_fits(self, seq: Sequence, spec_slack: int) -> str | None:
        return self.kv.never_fits(seq, spec_slack)

    def allocate(self, seq: Sequence, spec_slack: int) -> bool:
        if not self.kv.allocate(seq, spec_slack):
            return False
        self.states.reset(seq)
        return True

    def free(self, seq: Sequence) -> None:
        self.kv.free(seq)
        self.states.release(seq)
        self.pending.pop(seq.seq_id, None)
        self._names.pop(seq.seq_id, None)

    def step(self, chunks: list[Chunk], decode: list[int]) -> CacheStep:
        return StateStep(self, self.kv.step(chunks, decode), chunks, decode)

    # --- prefix reuse ----------------------------------------------------------------------

    def names(self, seq: Sequence) -> list[bytes]:
        if seq.seq_id not in self._names:
            self._names[seq.seq_id] = self.snapshots.names(seq.token_ids[:seq.num_prompt_tokens])
        return self._names[seq.seq_id]

    def reuse(self, seq: Sequence) -> None:
        # The last prompt token is always computed (its logits start the answer); a request
        # that wants its prompt's logprobs computes every prompt token (as vLLM does).
        if self.snapshots is None or seq.request.prompt_logprobs:
            return
        usable = (seq.num_prompt_tokens - 1) // self.snapshots.block_size
        run = self.snapshots.match(self.names(seq)[:usable])
        covered = len(run) * self.snapshots.block_size
        if covered <= seq.num_cached:
            return
        assert isinstance(self.kv, SlabKVCache)  # the space's rule: prefix_cache = on needs kv_cache = slab
        for j, snap in enumerate(run):
            self.kv.copy_in(seq, j * self.snapshots.block_size, snap.keys, snap.values)
        state = run[-1].state
        for layer in range(self.shape.layers):
            conv, recurrent = self.states.of(layer, seq)
            conv.copy_(state.conv[layer])
            recurrent.copy_(state.recurrent[layer])
        self.snapshots.hit_tokens += covered - seq.num_cached
        seq.num_cached = covered

    def boundaries(self, chunk: Chunk) -> tuple[int, ...]:
        """Block boundaries inside a prompt chunk, (start, end], whose snapshot is not held yet."""
        seq = chunk.seq
        if self.snapshots is None or chunk.start >= seq.num_prompt_tokens:
            return ()
        size = self.snapshots.block_size
        names = self.names(seq)
        ends = range((chunk.start // size + 1) * size, min(chunk.end, seq.num_prompt_tokens) + 1, size)
        return tuple(b for b in ends if names[b // size - 1] not in self.snapshots)

    def commit(self, seq: Sequence) -> None:
        self.kv.commit(seq)
        size = self.snapshots.block_size if self.snapshots is not None else 0
        for boundary, state in self.pending.pop(seq.seq_id, {}).items():
            keys, values = self.kv.copy_out(seq, boundary - size, boundary)
            self.snapshots.put(self.names(seq)[boundary // size - 1], Snapshot(keys, values, state))


class StateStep(CacheStep):
    """One step's view: the attention layers through the KV cache's own step, the linear
    layers through `recur_chunk` (one request's tokens) and `recur_decode` (one token of
    each decoding request, batched)."""

    def __init__(self, cache: StateCache, kv_step: CacheStep, chunks: list[Chunk], decode: list[int]):
        self.cache, self.kv_step, self.chunks = cache, kv_step, chunks
        self.decoding = [chunks[i].seq for i in decode]
        self.boundaries = [cache.boundaries(c) for c in chunks]
        if decode and cache.in_place:
            # every slot below the highest decoding one takes part, the others with g = 0 and
            # beta = 0, which leave their state as it was; the rows in slot order need no placing
            slots = [s.slot for s in self.decoding]
            self.width = max(slots) + 1
            self.rows = None if slots == list(range(self.width)) else torch.tensor(slots, device=cache.states.all.conv.device)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv_step.write(layer, k, v)

    def read(self, layer: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv_step.read(layer, i)

    def read_decode(self, layer: int):
        return self.kv_step.read_decode(layer)

    def recur_chunk(self, layer: int, i: int, mixed: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                    heads: DeltaHeads) -> torch.Tensor:
        """Chunk i's tokens (mixed [T, conv_dim], g and beta [T, Hv]) continuing its
        request's state, which they update; out [T, Hv, dv] (float32). The chunk is cut at
        the snapshot boundaries it crosses and the state at each is captured."""
        chunk = self.chunks[i]
        conv, recurrent = self.cache.states.of(layer, chunk.seq)
        if chunk.length == 1:  # a lone decode: the recurrent step, whatever the prompt form
            y, new_conv = conv_step(mixed, weight, conv[None])
            out, new_state = recurrent_delta_rule(*heads.split(y), g, beta, recurrent[None])
            conv.copy_(new_conv[0])
            recurrent.copy_(new_state[0])
            return out
        y, window = conv_prefill(mixed, weight, conv)
        q, k, v = heads.split(y)
        S, outs, at = recurrent, [], 0
        for end in sorted({b - chunk.start for b in self.boundaries[i]} | {chunk.length}):
            o, S = self.cache.rule(q[at:end], k[at:end], v[at:end], g[at:end], beta[at:end], S)
            outs.append(o)
            if chunk.start + end in self.boundaries[i]:
                # window column j holds input j - (K-1): the K-1 inputs before `end` are the conv state there
                self._capture(chunk.seq, chunk.start + end, layer, window[:, end:end + conv.shape[-1]], S)
            at = end
        conv.copy_(window[:, window.shape[1] - conv.shape[-1]:])
        recurrent.copy_(S)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _capture(self, seq: Sequence, boundary: int, layer: int, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        pending = self.cache.pending.setdefault(seq.seq_id, {})
        if boundary not in pending:
            pending[boundary] = self.cache.shape.zeros(device=conv.device, dtype=conv.dtype)
        pending[boundary].conv[layer].copy_(conv)
        pending[boundary].recurrent[layer].copy_(recurrent)

    def recur_decode(self, layer: int, mixed: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                     heads: DeltaHeads) -> torch.Tensor:
        """One token of each decoding request (rows in decode-chunk order) -> out [B, Hv, dv]."""
        if self.cache.in_place:
            return self._decode_in_place(layer, mixed, g, beta, weight, heads)
        states = self.cache.states
        conv, recurrent = states.gather(layer, self.decoding)
        y, conv = conv_step(mixed, weight, conv)
        out, recurrent = recurrent_delta_rule(*heads.split(y), g, beta, recurrent)
        states.scatter(layer, self.decoding, conv, recurrent)
        return out

    def _decode_in_place(self, layer: int, mixed: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                         heads: DeltaHeads) -> torch.Tensor:
        all_ = self.cache.states.all
        conv, recurrent = all_.conv[layer, :self.width], all_.recurrent[layer, :self.width]
        if self.rows is not None:  # each request's token on its slot's row; idle rows decay by 1 and write 0
            mixed = mixed.new_zeros(self.width, mixed.shape[1]).index_copy_(0, self.rows, mixed)
            g = g.new_zeros(self.width, g.shape[1]).index_copy_(0, self.rows, g)
            beta = beta.new_zeros(self.width, beta.shape[1]).index_copy_(0, self.rows, beta)
        y, new_conv = conv_step(mixed, weight, conv)
        if self.rows is None:
            conv.copy_(new_conv)
        else:
            active = torch.zeros(self.width, dtype=torch.bool, device=conv.device).index_fill_(0, self.rows, True)
            conv.copy_(torch.where(active[:, None, None], new_conv, conv))
        out = recurrent_delta_rule_(*heads.split(y), g, beta, recurrent)
        return out if self.rows is None else out.index_select(0, self.rows)


def make_state_cache(kv: KVCache, model_config, config: EngineConfig, device: torch.device, dtype: torch.dtype, identity: str) -> StateCache:
    """The state cache of `design.kv_cache` around `kv`, with prefix snapshots named by the
    checkpoint's `identity` when `design.prefix_cache` is on."""
    shape = StateShape.of(model_config)
    states = SlotStates(shape, kv.num_slots, device, dtype) if isinstance(kv, SlabKVCache) else RequestStates(shape, device, dtype)
    snapshots = PrefixSnapshots(identity, config.block_size, config.snapshot_blocks) if config.prefix_cache else None
    return StateCache(kv, states, shape, config.delta_rule, config.state_update == "inplace", snapshots)
