"""Linear + residual add + LayerNorm against an fp64 reference."""
import pytest
import torch

from helpers import assert_close_to_dtype, DEVICE, KERNEL_DTYPES as DTYPES

from emotalk_fast.kernels.linear_add_layer_norm import linear_add_layer_norm
from emotalk_fast.kernels.reference import linear_add_layer_norm_ref



def _inputs(lead, K, N, dtype, seed=0, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, K, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    b = (0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype) if with_bias else None
    r = torch.randn(*lead, N, generator=g).to(DEVICE, dtype)
    lw = (1 + 0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    lb = (0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    return x, w, b, r, lw, lb


def _check(args, name, eps=1e-5):
    out = linear_add_layer_norm(*args, eps=eps)
    assert out.shape == args[3].shape and out.dtype == args[0].dtype
    assert_close_to_dtype(out, linear_add_layer_norm_ref(*args, eps=eps, upcast=False),
                          linear_add_layer_norm_ref(*args, eps=eps), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead, K, N", [
    ((1,), 832, 832),        # one frame, the real width
    ((2, 17), 1664, 832),    # FFN down-projection shape
    ((299,), 832, 832),
    ((5,), 100, 52),         # odd K and N
])
def test_linear_add_layer_norm(lead, K, N, dtype):
    _check(_inputs(lead, K, N, dtype), f"{lead} K={K} N={N} {dtype}")


def test_no_bias_strided_x_and_eps():
    x, w, _, r, lw, lb = _inputs((33,), 900, 832, torch.float16, seed=2)
    x = x[:, :832]  # row stride 900
    w = w[:, :832]
    _check((x, w, None, r, lw, lb), "no bias, strided", eps=1e-3)


def test_validation():
    x, w, b, r, lw, lb = _inputs((3,), 16, 8, torch.float32)
    with pytest.raises(ValueError):
        linear_add_layer_norm(x, w.t(), b, r, lw, lb)
    with pytest.raises(ValueError):
        linear_add_layer_norm(x, w, b, r[:, :4], lw, lb)
    x, w, b, r, lw, lb = _inputs((3,), 16, 1100, torch.float32)
    with pytest.raises(ValueError):
        linear_add_layer_norm(x, w, b, r, lw, lb)
