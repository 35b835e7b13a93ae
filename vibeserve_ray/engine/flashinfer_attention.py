"""FlashInfer kernels on CUDA: the GPU extension point of `design.attention`.

Imported only when the design asks for it on a CUDA device (flashinfer is the `gpu`
extra). Contexts arrive in the caches' [kv_heads, len, d] layout, FlashInfer's "HND".
Decodes run one request per kernel here; the batched paged-KV wrappers
(BatchDecodeWithPagedKVCacheWrapper) are the next step for an agent to take.
"""

from __future__ import annotations

import torch

from .attention import AttentionBackend


class FlashInferAttention(AttentionBackend):
    def __init__(self) -> None:
        import flashinfer  # noqa: F401 - fail at engine start, not mid-request

        self.fi = flashinfer

    def prefill(self, q, k, v):
        if q.shape[0] == 1:
            return self.fi.single_decode_with_kv_cache(q[0], k, v, kv_layout="HND")[None]
        return self.fi.single_prefill_with_kv_cache(q, k, v, causal=True, kv_layout="HND")

    def decode(self, q, k, v, mask):
        lengths = mask[:, 0, 0].sum(-1).tolist()
        return torch.stack([self.fi.single_decode_with_kv_cache(q[i], k[i, :, :n], v[i, :, :n], kv_layout="HND")
                            for i, n in enumerate(lengths)])
