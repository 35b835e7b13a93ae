"""The decode kernel of `attention = decode_kernel` against torch's SDPA: every head
grouping, strided caches (a slab's leading slots, a paged cache's transposed gather),
ragged lengths, both dtypes; and what it refuses to take goes to SDPA."""

from __future__ import annotations

import shutil

import pytest
import torch

from vibeserve_ray.engine.layers import decode_kernel
from vibeserve_ray.engine.layers.attention import DecodeKernelAttention, SdpaAttention

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler to build the kernel")


def _case(dtype, batch=5, kv_heads=3, group=2, head_dim=64, max_len=96, seed=0, lengths=(1, 17, 40, 3, 33)):
    g = torch.Generator().manual_seed(seed)
    slab_k = torch.randn(batch + 2, kv_heads, max_len, head_dim, generator=g).to(dtype)  # more slots than the batch
    slab_v = torch.randn(batch + 2, kv_heads, max_len, head_dim, generator=g).to(dtype)
    lengths = torch.tensor(list(lengths)[:batch])
    width = int(lengths.max())
    k, v = slab_k[:batch, :, :width], slab_v[:batch, :, :width]  # strided views, as the slab cache reads them
    # queries as the model's fused q/k projection leaves them: every head of a token, then the next token's
    q = torch.randn(batch, kv_heads * group + kv_heads, head_dim, generator=g).to(dtype)[:, :kv_heads * group]
    mask = (torch.arange(width)[None] < lengths[:, None])[:, None, None, :]
    return q, k, v, mask


@pytest.mark.parametrize("plain", [False, True], ids=["vector", "plain"])  # AVX-512 intrinsics where the CPU has them, or the portable loops
@pytest.mark.parametrize("group", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_kernel_equals_sdpa(group, dtype, tol, plain):
    q, k, v, mask = _case(dtype, group=group)
    backend = DecodeKernelAttention(q.shape[-1], group, dtype, plain)
    assert backend.kernel is not None
    got = backend.decode(q, k, v, mask)
    want = SdpaAttention().decode(q.float().contiguous(), k.float(), v.float(), mask)
    assert got.dtype == dtype and got.shape == q.shape
    assert (got.float() - want).abs().max().item() < tol


@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: more threads than this machine's cores, each with its scratch slice
def test_pairs_shared_among_threads_give_the_same_output(threads):
    """The (sequence, KV head) pairs run on torch's threads; each pair's arithmetic is its
    own, so any number of threads gives the same bits as one."""
    q, k, v, mask = _case(torch.bfloat16, batch=5, kv_heads=3, group=3, max_len=2048, lengths=[700, 1, 2048, 350, 1200])
    backend = DecodeKernelAttention(64, 3, torch.bfloat16)  # 12,897 key rows: past the kernel's SHARE_FROM
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = backend.decode(q, k, v, mask)
        torch.set_num_threads(threads)
        for _ in range(3):
            assert torch.equal(backend.decode(q, k, v, mask), alone)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("head_dim", [64, 40])  # 40: not a multiple of 16, the plain loops throughout
def test_queries_read_their_own_rows(head_dim):
    """decode_at: query b attends over cache row rows[b] (a slab's slots, in any order, idle ones between)."""
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(6, 2, 50, head_dim, generator=g), torch.randn(6, 2, 50, head_dim, generator=g)
    lengths = torch.tensor([1, 33, 1, 50, 7, 1])
    mask = (torch.arange(50)[None] < lengths[:, None])[:, None, None, :]
    rows = torch.tensor([3, 1, 4])
    q = torch.randn(3, 4, head_dim, generator=g)
    got = DecodeKernelAttention(head_dim, 2, torch.float32).decode_at(q, k, v, mask, rows)
    want = SdpaAttention().decode(q, k[rows], v[rows], mask[rows])
    assert (got - want).abs().max().item() < 2e-6
    fallback = DecodeKernelAttention(head_dim, 4, torch.float32)  # another grouping: sdpa, placed on the rows
    assert (fallback.decode_at(q, k, v, mask, rows) - want).abs().max().item() < 2e-6


def test_paged_layout_and_a_new_mask_each_step():
    q, k, v, mask = _case(torch.float32)
    paged_k, paged_v = k.transpose(0, 1).contiguous().transpose(0, 1), v.transpose(0, 1).contiguous().transpose(0, 1)
    backend = DecodeKernelAttention(64, 2, torch.float32)
    want = SdpaAttention().decode(q.contiguous(), k, v, mask)
    assert torch.allclose(backend.decode(q, paged_k, paged_v, mask), want, atol=2e-6)
    shorter = mask.clone()
    shorter[2, ..., 20:] = False  # the next step's mask: its lengths are read again
    assert torch.allclose(backend.decode(q, k, v, shorter), SdpaAttention().decode(q.contiguous(), k, v, shorter), atol=2e-6)


def test_what_the_kernel_does_not_take_goes_to_sdpa():
    q, k, v, mask = _case(torch.float16)
    half = DecodeKernelAttention(64, 2, torch.float16)  # no float16 kernel: sdpa throughout
    assert half.kernel is None
    assert torch.equal(half.decode(q, k, v, mask), SdpaAttention().decode(q, k, v, mask))
    q, k, v, mask = _case(torch.float32, group=1)
    other_shape = DecodeKernelAttention(64, 2, torch.float32)  # built for two query heads per KV head
    assert torch.equal(other_shape.decode(q, k, v, mask), SdpaAttention().decode(q, k, v, mask))


def test_build_is_cached_and_a_missing_compiler_is_named(monkeypatch):
    assert decode_kernel.kernel(64, 2, torch.float32) is decode_kernel.kernel(64, 2, torch.float32)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match="no C.. compiler"):
        decode_kernel.compiler()


def test_a_compiler_without_openmp_builds_the_one_thread_kernel(tmp_path, monkeypatch):
    """The source builds without -fopenmp too (its OpenMP parts behind _OPENMP): a compiler
    that refuses the flag gets the serial build instead of a failed engine."""
    real = shutil.which("g++") or shutil.which("c++")
    fake = tmp_path / "no-openmp-c++"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && {{ echo "unsupported option -fopenmp" >&2; exit 1; }}; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a library of its own, not one the real compiler built
    monkeypatch.setattr(decode_kernel.tempfile, "tempdir", None)
    q, k, v, mask = _case(torch.float32, kv_heads=2, group=1, head_dim=48)
    backend = DecodeKernelAttention(48, 1, torch.float32, plain=True)
    assert backend.kernel is not None
    assert (backend.decode(q, k, v, mask) - SdpaAttention().decode(q.contiguous(), k, v, mask)).abs().max().item() < 2e-6

