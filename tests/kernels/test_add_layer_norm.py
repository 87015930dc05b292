"""Residual add + LayerNorm against an fp64 reference."""
import pytest
import torch

from helpers import assert_close_to_dtype, DEVICE, KERNEL_DTYPES as DTYPES

from emotalk_fast.kernels.add_layer_norm import add_layer_norm
from emotalk_fast.kernels.reference import add_layer_norm_ref



def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = shape[-1]
    x = (torch.randn(shape, generator=g) * 3 + 1).to(DEVICE, dtype)
    r = torch.randn(shape, generator=g).to(DEVICE, dtype)
    w = (1 + 0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    b = (0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    return x, r, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 832), (2, 17, 832), (299, 1024), (3, 5, 100), (7, 1)])
def test_add_layer_norm(shape, dtype):
    x, r, w, b = _inputs(shape, dtype)
    out = add_layer_norm(x, r, w, b, eps=1e-5)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close_to_dtype(out, add_layer_norm_ref(x, r, w, b, 1e-5, upcast=False),
                          add_layer_norm_ref(x, r, w, b, 1e-5), f"{shape} {dtype}")


def test_eps_strided_rows_and_fp32_params():
    x, r, w, b = _inputs((40, 1000), torch.float16, seed=1)
    x = x[:, :832]  # row stride 1000, width 832
    r = r[:, :832]
    w32, b32 = w[:832].float(), b[:832].float()
    out = add_layer_norm(x, r, w32, b32, eps=1e-3)
    assert_close_to_dtype(out, add_layer_norm_ref(x, r, w32, b32, 1e-3, upcast=False).half(),
                          add_layer_norm_ref(x, r, w32, b32, 1e-3), "strided")


def test_validation():
    x, r, w, b = _inputs((2, 8), torch.float32)
    with pytest.raises(ValueError):
        add_layer_norm(x, r[:1], w, b)
    with pytest.raises(ValueError):
        add_layer_norm(x, r, w[:4], b)
    with pytest.raises(TypeError):
        add_layer_norm(x.double(), r.double(), w, b)
