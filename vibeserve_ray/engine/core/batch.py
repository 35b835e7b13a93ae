"""One forward step's work: chunks of tokens from several sequences (sequence.Chunk), flattened.

Every linear layer runs once over all the step's tokens (where batching pays on any
device); only the token mixers need to know where one sequence ends and the next
begins: attention in `ForwardBatch.attend`, a hybrid's linear attention (its recurrent
state, core/state_cache.py) in `ForwardBatch.recur`.

With `pad = True` the step's rows are padded to a few sizes (`padded_rows`): oneDNN, which
runs bfloat16 and packed linears on CPU, builds a kernel for each new row count it sees,
~2 ms a linear shape (measured: 11.2 ms for the five shapes of a tiny-Llama layer and its
vocabulary projection at a new count, 2.0 at a seen one), and a server's steps bring new
counts for minutes. Padding rows are never attended, written to the cache, or sampled.
"""

from __future__ import annotations

import torch

from ..layers.attention import AttentionBackend
from ..layers.gated_delta import DeltaHeads
from .kv_cache import KVCache
from .sequence import Chunk


def padded_rows(n: int) -> int:
    """The row count a step of `n` tokens runs at when padded: a multiple of 16 up to 512,
    then of 128 (at most 44 sizes below 2,048 tokens; at most 1/8 extra rows past 128)."""
    step = 16 if n <= 512 else 128
    return -(-n // step) * step


class ForwardBatch:
    def __init__(self, chunks: list[Chunk], cache: KVCache, backend: AttentionBackend, device: torch.device, pad: bool = False):
        self.chunks = chunks
        self.backend = backend
        self.offsets, at = [], 0
        for c in chunks:
            self.offsets.append(at)
            at += c.length
        self.num_tokens = at
        self.num_rows = padded_rows(at) if pad else at  # rows of the step's activations
        single = [i for i, c in enumerate(chunks) if c.length == 1]
        self.decode = single if len(single) > 1 else []  # batched only when there is a batch
        self.all_decode = len(self.decode) == len(chunks)  # the common steady state: no scatter needed
        decoding = set(self.decode)
        self.others = [i for i in range(len(chunks)) if i not in decoding]
        self.decode_rows = torch.tensor([self.offsets[i] for i in self.decode], device=device, dtype=torch.long)
        self.cache = cache.step(chunks, self.decode)

    def input_ids(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pad = [0] * (self.num_rows - self.num_tokens)  # token 0 at position 0: any real token would do
        ids = [t for c in self.chunks for t in (*c.token_ids, *c.draft)] + pad
        pos = [p for c in self.chunks for p in range(c.start, c.end)] + pad
        return torch.tensor(ids, device=device), torch.tensor(pos, device=device)

    def logits_rows(self) -> list[int]:
        return [self.offsets[i] + c.length - c.num_logits + j for i, c in enumerate(self.chunks) for j in range(c.num_logits)]

    def scored_rows(self) -> list[int]:
        """Rows whose logits score prompt tokens (`Chunk.scored`), in chunk order."""
        return [self.offsets[i] + p - 1 - c.start for i, c in enumerate(self.chunks) for p in c.scored or ()]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [rows, heads, d], k/v [rows, kv_heads, d] -> [rows, heads, d] (padding rows: zeros)."""
        if self.num_rows > self.num_tokens:
            n = self.num_tokens
            return torch.cat((self._attend(layer, q[:n], k[:n], v[:n]), q.new_zeros((self.num_rows - n, *q.shape[1:]))))
        return self._attend(layer, q, k, v)

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, k, v)
        if len(self.others) == 1 and not self.decode:  # one sequence (serial, or a lone prefill)
            ck, cv = self.cache.read(layer, 0)
            return self.backend.prefill(q, ck, cv)
        if self.all_decode:
            return self._decode(layer, q)
        out = torch.empty_like(q)
        for i in self.others:
            o, n = self.offsets[i], self.chunks[i].length
            ck, cv = self.cache.read(layer, i)
            out[o:o + n] = self.backend.prefill(q[o:o + n], ck, cv)
        if self.decode:
            out[self.decode_rows] = self._decode(layer, q[self.decode_rows])
        return out

    def _decode(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """All single-token chunks in one call; q [decodes, heads, d]."""
        ck, cv, mask, rows = self.cache.read_decode(layer)
        if rows is None:
            return self.backend.decode(q, ck, cv, mask)
        return self.backend.decode_at(q, ck, cv, mask, rows)  # the cache attends over its own rows (slab slots)

    def recur(self, layer: int, mixed: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, conv_weight: torch.Tensor,
              heads: DeltaHeads) -> torch.Tensor:
        """Linear-attention layer `layer` (among the linear ones): each sequence's tokens
        (mixed [tokens, conv_dim], g and beta [tokens, Hv]) continue its conv and recurrent
        state -> [tokens, Hv, dv] float32."""
        if self.all_decode:
            return self.cache.recur_decode(layer, mixed, g, beta, conv_weight, heads)
        out = torch.empty(self.num_tokens, heads.num_v_heads, heads.head_v_dim, dtype=torch.float32, device=mixed.device)
        for i in self.others:
            o, n = self.offsets[i], self.chunks[i].length
            out[o:o + n] = self.cache.recur_chunk(layer, i, mixed[o:o + n], g[o:o + n], beta[o:o + n], conv_weight, heads)
        if self.decode:
            r = self.decode_rows
            out[r] = self.cache.recur_decode(layer, mixed[r], g[r], beta[r], conv_weight, heads)
        return out
