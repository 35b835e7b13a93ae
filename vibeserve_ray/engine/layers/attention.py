"""Attention backends, chosen by `design.attention` (and the device).

- `sdpa`: torch's `scaled_dot_product_attention` (fused kernels on CPU and GPU).
- `eager`: the same math written out (matmul, mask, softmax, matmul): slower, but
  plain enough to read and to modify.
- `decode_kernel`: sdpa for prompt chunks; decodes by a kernel written for this engine
  (decode_attention.cpp, built with the host's compiler at load: decode_kernel.py), which
  reads each context to its own length: 4-5x faster than sdpa's at batch 16 on CPU.
- `flashinfer`: FlashInfer's kernels on CUDA, the extension point for GPU kernels (the
  space allows it only on cuda). flashinfer (the `gpu` extra) is imported when the
  backend is made, never on a CPU. Contexts arrive in the caches' [kv_heads, len, d]
  layout, FlashInfer's "HND". Decodes run one request per kernel here; the batched
  paged-KV wrappers (BatchDecodeWithPagedKVCacheWrapper) are the next step to take.

A backend takes a chunk's queries [q_len, heads, d] against its whole context
[kv_heads, ctx_len, d] (the queries are the last q_len positions, causal), and a batch
of single-token decodes against padded contexts with a mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import decode_kernel


class AttentionBackend:
    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [B, heads, d]; k, v [B, kv_heads, L, d]; mask [B, 1, 1, L] -> [B, heads, d]."""
        raise NotImplementedError

    def decode_at(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`decode` where query b attends over row rows[b] of k, v and mask (a slab's slots):
        here each query is put on its row and its answer taken back; a backend that reads
        each query's row itself overrides this."""
        placed = q.new_zeros((k.shape[0], *q.shape[1:])).index_copy_(0, rows, q)
        return self.decode(placed, k, v, mask).index_select(0, rows)


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """Queries at the end of the context: row i sees positions <= kv_len - q_len + i."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


class SdpaAttention(AttentionBackend):
    """enable_gqa shares each KV head across its query group without copying (measured
    2.5x faster than repeat_interleave on CPU); 4-D inputs keep SDPA on its fast kernel."""

    def prefill(self, q, k, v):
        q_len, kv_len = q.shape[0], k.shape[1]
        q4, k4, v4 = q.transpose(0, 1)[None], k[None], v[None]
        if q_len == 1:
            out = F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=True)
        elif q_len == kv_len:
            out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=causal_mask(q_len, kv_len, q.device), enable_gqa=True)
        return out[0].transpose(0, 1)

    def decode(self, q, k, v, mask):
        # A KV head's group of query heads attends as that many query positions (no
        # causal mask: one token each): one kernel row per KV head, not per query head
        # (measured ~15% faster than enable_gqa for batch-16 decodes on CPU).
        b, heads, d = q.shape
        kv_heads = k.shape[1]
        return F.scaled_dot_product_attention(q.view(b, kv_heads, heads // kv_heads, d), k, v, attn_mask=mask).view(b, heads, d)


class EagerAttention(AttentionBackend):
    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # q [B, heads, q_len, d] grouped as [B, kv_heads, group, q_len, d] against k [B, kv_heads, 1, L, d]
        b, heads, q_len, d = q.shape
        kv_heads = k.shape[1]
        qg = q.view(b, kv_heads, heads // kv_heads, q_len, d)
        scores = (qg @ k[:, :, None].transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1) @ v[:, :, None]).view(b, heads, q_len, d)

    def prefill(self, q, k, v):
        q_len, kv_len = q.shape[0], k.shape[1]
        mask = causal_mask(q_len, kv_len, q.device)[None, None, None]
        return self._attend(q.transpose(0, 1)[None], k[None], v[None], mask)[0].transpose(0, 1)

    def decode(self, q, k, v, mask):
        return self._attend(q[:, :, None], k, v, mask[:, :, None])[:, :, 0]


class DecodeKernelAttention(SdpaAttention):
    def __init__(self, head_dim: int, group: int, dtype: torch.dtype, plain: bool = False) -> None:
        self.shape = (head_dim, group, dtype)
        # built now, not mid-request
        self.kernel = decode_kernel.kernel(head_dim, group, dtype, plain) if dtype in decode_kernel.SYMBOLS else None
        self._mask: torch.Tensor | None = None
        self._lengths = torch.empty(0, dtype=torch.int64)

    def decode(self, q, k, v, mask):
        return self._kernel_decode(q, k, v, mask, None) if self._takes(q, k, v) else super().decode(q, k, v, mask)

    def decode_at(self, q, k, v, mask, rows):
        """Each query reads its own row: no placing on the slab's rows and taking back."""
        return self._kernel_decode(q, k, v, mask, rows) if self._takes(q, k, v) else super().decode_at(q, k, v, mask, rows)

    def _takes(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Whether the kernel built for this engine takes these tensors (else SDPA does)."""
        return (self.kernel is not None and (q.shape[-1], q.shape[1] // k.shape[1], q.dtype) == self.shape and k.dtype == v.dtype == q.dtype
                and q.device.type == "cpu" and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride() == k.stride())

    def _kernel_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        b, heads, d = q.shape
        kv_heads, width = k.shape[1], k.shape[2]
        if mask is not self._mask:  # one mask per step, the same object for every layer
            self._mask, self._lengths = mask, mask.reshape(k.shape[0], width).sum(-1)  # each context is a prefix of the padded width
        out = torch.empty((b, heads, d), dtype=q.dtype)
        threads = torch.get_num_threads()
        scratch = torch.empty(threads * (heads // kv_heads) * width, dtype=torch.float32)  # a slice per thread
        self.kernel(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
                    None if rows is None else rows.data_ptr(), self._lengths.data_ptr(), b, kv_heads, d ** -0.5,
                    out.data_ptr(), scratch.data_ptr(), width, threads)
        return out


class FlashInferAttention(AttentionBackend):
    def __init__(self) -> None:
        import flashinfer  # optional (the gpu extra), CUDA only: imported here so a CPU engine never needs it

        self.fi = flashinfer

    def prefill(self, q, k, v):
        if q.shape[0] == 1:
            return self.fi.single_decode_with_kv_cache(q[0], k, v, kv_layout="HND")[None]
        return self.fi.single_prefill_with_kv_cache(q, k, v, causal=True, kv_layout="HND")

    def decode(self, q, k, v, mask):
        lengths = mask[:, 0, 0].sum(-1).tolist()
        return torch.stack([self.fi.single_decode_with_kv_cache(q[i], k[i, :, :n], v[i, :, :n], kv_layout="HND")
                            for i, n in enumerate(lengths)])


BACKENDS = {"sdpa": SdpaAttention, "eager": EagerAttention, "flashinfer": FlashInferAttention}


def make_attention(name: str, head_dim: int, group: int, dtype: torch.dtype) -> AttentionBackend:
    """The backend of `design.attention` for heads of `head_dim` with `group` query heads
    per KV head (which devices may run it is the space's rule)."""
    if name == "decode_kernel":
        return DecodeKernelAttention(head_dim, group, dtype)
    return BACKENDS[name]()
