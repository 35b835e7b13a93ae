"""Attention over one request's cached keys and values (the seed's `attention = "torch"`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [1, heads, q_len, d]; k, v [1, kv_heads, kv_len, d] holding the q tokens last.

    enable_gqa lets SDPA share each KV head across its query group without copying
    (measured 2.5x faster than repeat_interleave on CPU); 4-D inputs keep SDPA on its
    fast kernel (3-D measured 6x slower).
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    if q_len == 1:  # decode: the one new token sees everything
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if q_len == kv_len:  # prefill of a whole prompt
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    # queries after a cached prefix: causal, aligned to the bottom-right
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
