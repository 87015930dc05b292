"""Split-K KV-cache decode: against the fp64 reference and against prefill itself."""
import pytest
import torch

from helpers import assert_close, assert_close_to_dtype, DEVICE, KERNEL_DTYPES as DTYPES

from emotalk_fast.kernels.periodic_alibi_attention import periodic_alibi_attention
from emotalk_fast.kernels.periodic_alibi_decode import decode_chunk, periodic_alibi_decode
from emotalk_fast.kernels.reference import periodic_alibi_decode_ref, periodic_alibi_ring_decode_ref

SLOPES = torch.tensor([0.5, 0.25, 0.125, 0.0625], device=DEVICE)


def _cache(B, H, S, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, H, S, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, H, S, D, generator=g).to(DEVICE, dtype)
    return k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_len, n_new", [
    (1, 1), (2, 1), (31, 3), (257, 16), (257, 1), (1000, 3),
    pytest.param(3000, 16, marks=pytest.mark.slow),
])
def test_decode_vs_reference(kv_len, n_new, dtype):
    H, D = 4, 208
    k, v = _cache(2, H, kv_len + 9, D, dtype, seed=kv_len)  # capacity beyond kv_len
    k[:, :, kv_len:] = float("nan")  # slots past the new keys must never be read
    v[:, :, kv_len:] = float("nan")
    q = torch.randn(2, H, n_new, D, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    offset = kv_len - n_new
    out = periodic_alibi_decode(q, k, v, SLOPES, 30, offset)
    ref64 = periodic_alibi_decode_ref(q, k, v, SLOPES, 30, offset)
    ref_same = periodic_alibi_decode_ref(q, k, v, SLOPES, 30, offset, upcast=False)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close_to_dtype(out, ref_same, ref64, f"kv_len={kv_len} n_new={n_new}")


@pytest.mark.parametrize("n_new", [1, 3, 16])
def test_decode_equals_prefill_row_by_row(n_new):
    """Streaming: decoding chunks of n_new frames over a growing cache reproduces prefill."""
    T, H, D, period = 600, 4, 208, 7
    k, v = _cache(1, H, T, D, torch.float32, seed=11)
    q = torch.randn(1, H, T, D, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    full = periodic_alibi_attention(q, k, v, SLOPES, period)
    # the chunk boundary (256 keys) is crossed by the later steps
    offsets = list(range(0, 2 * n_new + 1, n_new)) + [255 - n_new // 2, 512 - n_new, T - n_new]
    for off in offsets:
        step = periodic_alibi_decode(q[:, :, off:off + n_new], k, v, SLOPES, period, off)
        assert_close(step, full[:, :, off:off + n_new], 1e-5, f"offset {off}")


def test_decode_strided_cache_and_scale():
    # cache stored as [B,S,H,D] (a typical append-only layout) viewed as [B,H,S,D]
    g = torch.Generator().manual_seed(3)
    kv = torch.randn(2, 2, 300, 4, 64, generator=g).to(DEVICE)
    k, v = kv[0].transpose(1, 2), kv[1].transpose(1, 2)
    q = torch.randn(2, 4, 5, 64, generator=g).to(DEVICE)
    out = periodic_alibi_decode(q, k, v, SLOPES, 30, 290, scale=0.3)
    assert_close_to_dtype(out, periodic_alibi_decode_ref(q, k, v, SLOPES, 30, 290, scale=0.3, upcast=False),
                          periodic_alibi_decode_ref(q, k, v, SLOPES, 30, 290, scale=0.3), "strided")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capacity, n_new", [(17, 3), (300, 1), (300, 16), (700, 12)])
def test_ring_decode_ragged_rows_vs_reference(capacity, n_new, dtype):
    """Each row at its own position in its own ring slot (some wrapped, some not, one shorter
    than the chunk, two rows on one slot), the grid fixed by the whole ring."""
    H, D = 4, 208
    k, v = _cache(5, H, capacity, D, dtype, seed=capacity)
    offsets = torch.tensor([0, capacity - n_new, capacity + 5, 3 * capacity + 1, 40 % capacity], device=DEVICE)
    slots = torch.tensor([4, 0, 2, 1, 2], device=DEVICE)
    q = torch.randn(5, H, n_new, D, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    out = periodic_alibi_decode(q, k, v, SLOPES, 7, offsets, slots=slots)
    ref64 = periodic_alibi_ring_decode_ref(q, k, v, SLOPES, 7, offsets, slots)
    ref_same = periodic_alibi_ring_decode_ref(q, k, v, SLOPES, 7, offsets, slots, upcast=False)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close_to_dtype(out, ref_same, ref64, f"capacity={capacity} n_new={n_new}")


def test_ring_decode_in_order_equals_int_offset():
    """Tensor offsets over an unwrapped ring are the int-offset (in-order) decode."""
    k, v = _cache(2, 4, 400, 64, torch.float32, seed=4)
    q = torch.randn(2, 4, 3, 64, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    want = periodic_alibi_decode(q, k, v, SLOPES, 30, 290)
    got = periodic_alibi_decode(q, k, v, SLOPES, 30, torch.tensor([290, 290], device=DEVICE), span=293)
    assert_close(got, want, 1e-6, "ring vs in order")


def test_chunking_policy():
    assert decode_chunk(1) == 256 and decode_chunk(3000) == 256
    assert -(-100_000 // decode_chunk(100_000)) <= 64  # at most 64 chunks to merge
    assert decode_chunk(100_000) % 64 == 0  # whole key blocks per chunk


def test_validation():
    k, v = _cache(1, 4, 20, 64, torch.float32, seed=0)
    q = torch.zeros(1, 4, 17, 64, device=DEVICE)
    with pytest.raises(ValueError):
        periodic_alibi_decode(q, k, v, SLOPES, 30, 0)  # more than 16 new queries
    with pytest.raises(ValueError):
        periodic_alibi_decode(q[:, :, :4], k, v, SLOPES, 30, 17)  # cache too short
