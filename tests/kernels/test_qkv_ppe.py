"""Packed QKV projection with periodic positional encoding, and the PPE table itself."""
import math

import pytest
import torch

from helpers import assert_close, assert_close_to_dtype, DEVICE, KERNEL_DTYPES as DTYPES

from emotalk_fast.kernels.qkv_ppe import qkv_ppe
from emotalk_fast.kernels.reference import periodic_positional_encoding, qkv_ppe_ref



def _inputs(B, T, C, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, C, generator=g) / C ** 0.5).to(DEVICE, dtype)
    b = (0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    return x, w, b


def _check(x, w, b, pe, offset, name):
    out = qkv_ppe(x, w, b, pe=pe, offset=offset)
    assert out.shape == (*x.shape[:2], w.shape[0]) and out.dtype == x.dtype
    assert_close_to_dtype(out, qkv_ppe_ref(x, w, b, pe, offset, upcast=False),
                          qkv_ppe_ref(x, w, b, pe, offset), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, offset", [(1, 1, 0), (2, 17, 0), (1, 17, 29), (1, 299, 0), (1, 5, 1000)])
def test_qkv_ppe_real_width(B, T, offset, dtype):
    C, period = 832, 30
    x, w, b = _inputs(B, T, C, 3 * C, dtype, seed=T)
    pe = periodic_positional_encoding(period, C, device=DEVICE)
    _check(x, w, b, pe, offset, f"B={B} T={T} offset={offset} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_pe_no_bias_odd_sizes(dtype):
    x, w, _ = _inputs(3, 19, 100, 150, dtype, seed=1)
    _check(x, w, None, None, 0, "plain linear")


def test_strided_x_and_other_period():
    x, w, b = _inputs(2, 40, 256, 96, torch.float16, seed=2)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B,T,C] view of [T,B,C] storage
    assert not x.is_contiguous()
    pe = periodic_positional_encoding(7, 256, dtype=torch.float16, device=DEVICE)
    _check(x, w, b, pe, 3, "strided")


def test_periodic_positional_encoding_matches_faceformer():
    period, dim = 30, 832
    pe = periodic_positional_encoding(period, dim)
    assert pe.shape == (period, dim) and pe.dtype == torch.float32
    pos = torch.arange(period, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    assert_close(pe[:, 0::2], torch.sin(pos * div), 1e-5, "sin")
    assert_close(pe[:, 1::2], torch.cos(pos * div), 1e-5, "cos")
    assert pe[0, 0] == 0 and pe[0, 1] == 1
    assert periodic_positional_encoding(4, 5).shape == (4, 5)  # odd width
    assert periodic_positional_encoding(4, 6, dtype=torch.float16).dtype == torch.float16


def test_validation():
    x, w, b = _inputs(1, 4, 16, 48, torch.float32)
    with pytest.raises(ValueError):
        qkv_ppe(x[0], w, b)
    with pytest.raises(ValueError):
        qkv_ppe(x, w[:, :8], b)
    with pytest.raises(ValueError):
        qkv_ppe(x, w, b, pe=torch.zeros(30, 8))
    with pytest.raises(TypeError):
        qkv_ppe(x.double(), w.double(), b)
