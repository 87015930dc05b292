"""Periodic-ALiBi causal attention (prefill) against an fp64 explicit-bias reference."""
import pytest
import torch

from helpers import assert_close_to_dtype, DEVICE, KERNEL_DTYPES as DTYPES

from emotalk_fast.kernels.periodic_alibi_attention import periodic_alibi_attention
from emotalk_fast.kernels.reference import periodic_alibi_attention_ref, periodic_alibi_bias


def _slopes(H):
    return torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)], device=DEVICE)


def _qkv(B, H, Tq, Tk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g).to(DEVICE, dtype)
    k = torch.randn(B, H, Tk, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, H, Tk, D, generator=g).to(DEVICE, dtype)
    return q, k, v


def _check(q, k, v, slopes, period, name, **kw):
    out = periodic_alibi_attention(q, k, v, slopes, period, **kw)
    ref64 = periodic_alibi_attention_ref(q, k, v, slopes, period, **kw)
    ref_same = periodic_alibi_attention_ref(q, k, v, slopes, period, upcast=False, **kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    return assert_close_to_dtype(out, ref_same, ref64, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 208])
@pytest.mark.parametrize("T", [1, 17, 299, pytest.param(1000, marks=pytest.mark.slow)])
def test_prefill(T, D, dtype):
    B = 2 if T < 1000 else 1
    q, k, v = _qkv(B, 4, T, T, D, dtype)
    _check(q, k, v, _slopes(4), 30, f"T={T} D={D} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("period, offset, Tq, extra_keys", [
    (7, 5, 17, 0),      # another period, queries start mid-sequence
    (1, 64, 33, 0),     # period 1: plain ALiBi-like integer distance; offset on a block edge
    (30, 100, 70, 40),  # keys past the last query exist and must be ignored
    (45, 0, 80, 0),
    (30, 10, 20, -15),  # queries past the last key see every key
])
def test_offsets_and_periods(period, offset, Tq, extra_keys, dtype):
    q, k, v = _qkv(2, 4, Tq, offset + Tq + extra_keys, 208, dtype, seed=1)
    _check(q, k, v, _slopes(4), period, f"period={period} offset={offset}", offset=offset)


def test_offset_rows_match_full_prefill():
    q, k, v = _qkv(1, 4, 150, 150, 64, torch.float32, seed=2)
    full = periodic_alibi_attention(q, k, v, _slopes(4), 30)
    part = periodic_alibi_attention(q[:, :, 90:], k, v, _slopes(4), 30, offset=90)
    torch.testing.assert_close(part, full[:, :, 90:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 208])
def test_ragged_batch(D, dtype):
    T = 150
    q, k, v = _qkv(3, 4, T, T, D, dtype, seed=3)
    seq_lens = torch.tensor([150, 1, 77], dtype=torch.int32, device=DEVICE)
    # poison the padding: it must not leak into valid rows
    for b, L in enumerate(seq_lens.tolist()):
        k[b, :, L:] = 1e4
        v[b, :, L:] = float("nan")
    out = periodic_alibi_attention(q, k, v, _slopes(4), 30, seq_lens=seq_lens)
    for b, L in enumerate(seq_lens.tolist()):
        assert (out[b, :, L:] == 0).all(), "padded query rows are written as zeros"
        sl = slice(0, L)
        args = (q[b:b + 1, :, sl], k[b:b + 1, :, sl], v[b:b + 1, :, sl], _slopes(4), 30)
        assert_close_to_dtype(out[b:b + 1, :, sl], periodic_alibi_attention_ref(*args, upcast=False),
                              periodic_alibi_attention_ref(*args), f"seq {b} len {L}")


def test_ragged_matches_ref_with_seq_lens():
    q, k, v = _qkv(3, 4, 40, 40, 64, torch.float32, seed=4)
    seq_lens = torch.tensor([40, 0, 23], dtype=torch.int32, device=DEVICE)
    _check(q, k, v, _slopes(4), 30, "ragged", seq_lens=seq_lens, offset=0)


def test_strided_inputs_and_scale():
    # [B,T,H,D] storage viewed as [B,H,T,D]: non-contiguous batch/head/time strides
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 45, 3, 4, 208, generator=g).to(DEVICE)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    _check(q, k, v, _slopes(4), 30, "strided", scale=0.05)


def test_bias_reference():
    bias = periodic_alibi_bias(torch.tensor([1.0, 0.5]), 3, Tq=2, Tk=6, offset=4)
    # query 0 is at position 4: distances 4,3,2,1,0,-1 -> floor(/3) = 1,1,0,0,0,masked
    assert bias[0, 0].tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, float("-inf")]
    # query 1 is at position 5: distances 5..0 -> 1,1,1,0,0,0, times slope 0.5
    assert bias[1, 1].tolist() == [-0.5, -0.5, -0.5, 0.0, 0.0, 0.0]


def test_validation():
    q, k, v = _qkv(1, 4, 8, 8, 64, torch.float32)
    with pytest.raises(ValueError):
        periodic_alibi_attention(q, k[:, :2], v[:, :2], _slopes(4), 30)
    with pytest.raises(ValueError):
        periodic_alibi_attention(q, k, v, _slopes(3), 30)
    with pytest.raises(TypeError):
        periodic_alibi_attention(q, k.half(), v, _slopes(4), 30)
    with pytest.raises(ValueError):
        periodic_alibi_attention(q, k, v, _slopes(4), 30, seq_lens=torch.tensor([8]))
    big = torch.zeros(1, 1, 2, 320, device=DEVICE)
    with pytest.raises(ValueError):
        periodic_alibi_attention(big, big, big, _slopes(1), 30)
