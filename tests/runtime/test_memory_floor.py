"""The live hop's memory floor (its encoders' weight bytes over the read bandwidth), the weight
layout for few-row products, and the positional convolution of a hop's few new rows."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from emotalk_fast import Animator
from emotalk_fast.backends.registry import resolve
from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.runtime.layout import column_major_linears
from emotalk_fast.runtime.memory_floor import MemoryFloor, encoder_weight_bytes, read_bandwidth
from emotalk_fast.streaming.budget import Budget, measure
from emotalk_fast.streaming.incremental import few_rows_grouped_conv
from emotalk_fast.streaming.settings import StreamSettings


def test_the_floor_counts_the_encoders_bytes_as_they_run():
    float32 = Animator.from_config("tiny", seed=1, device="cpu", warn_random=False)
    int8 = float32.with_encoders(resolve("int8"))
    encoders = [float32.model.content_encoder, float32.model.emotion_encoder]
    want = sum(t.numel() * 4 for e in encoders for t in {id(t): t for t in [*e.parameters(), *e.buffers()]}.values())
    assert encoder_weight_bytes(float32.model) == want
    linears = [m for e in encoders for layer in e.layers for m in layer.children() if isinstance(m, nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    # each linear weight: 4 bytes -> 1, plus a float32 scale per output channel
    scales = sum(m.weight.shape[0] * 4 for m in linears)
    assert encoder_weight_bytes(int8.model) == want - 3 * weights + scales


def test_the_bandwidth_is_measured_once_and_the_floor_said():
    bandwidth = read_bandwidth("cpu")
    assert 1e8 < bandwidth < 1e13 and read_bandwidth("cpu") == bandwidth  # measured once per process
    floor = MemoryFloor(2_430_000_000, 17.24e9)
    assert floor.seconds == pytest.approx(0.141, abs=1e-3)
    assert floor.describe(0.3702) == "2.6x its memory floor of 141 ms (2.43 GB of encoder weights at 17.2 GB/s)"
    budget = Budget(StreamSettings(hop_ms=100), {1: 0.3702}, floor=floor)
    assert budget.describe(1).startswith("a hop of 100 ms takes 370 ms for 1 stream (2.6x its memory floor of 141 ms")


def test_a_measured_budget_carries_the_floor_of_the_model_it_ran():
    animator = Animator.from_config("mini", seed=1, device="cpu", warn_random=False)
    budget = measure(animator.model, "cpu", torch.float32, StreamSettings(hop_ms=100), 1)
    assert budget.floor.weight_bytes == encoder_weight_bytes(animator.model) and budget.floor.seconds > 0


def test_column_major_weights_keep_their_values_and_checkpoints(tmp_path):
    animator = Animator.from_config("mini", seed=2, device="cpu", warn_random=False)  # laid out by prepare
    linears = [m for m in animator.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.t().is_contiguous() for m in linears)
    assert column_major_linears(animator.model) == 0  # already so
    row_major = Animator.from_config("mini", seed=2, device="cpu", warn_random=False).model.state_dict()
    fresh = {k: v.contiguous() for k, v in row_major.items()}
    assert all(torch.equal(v, fresh[k]) for k, v in animator.model.state_dict().items())
    ckpt.save_pretrained(animator.model.state_dict(), animator.config, tmp_path / "ckpt")
    again = Animator.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert all(torch.equal(v, fresh[k]) for k, v in again.model.state_dict().items())


@pytest.mark.parametrize("groups, bias", [(16, True), (4, False), (1, True)])
def test_the_few_rows_grouped_conv_is_the_convolution(groups, bias):
    torch.manual_seed(groups)
    conv = nn.Conv1d(64, 64, 16, groups=groups, bias=bias)
    x = torch.randn(3, 64, 9 + 15)
    want = F.conv1d(x, conv.weight, conv.bias, groups=groups).transpose(1, 2)
    got = few_rows_grouped_conv(x, conv)
    assert got.shape == want.shape == (3, 9, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
