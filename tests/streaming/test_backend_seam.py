"""The encoder-backend seam, used from outside the package: a backend defined here, registered by
name, streams through `Animator.stream`, a `StreamEngine` and the budget, and what its
capabilities exclude is refused in one line. docs/architecture.md ("Adding an encoder backend")
is this file."""
import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.backends import registry
from emotalk_fast.streaming.backend import Capabilities, EncoderBackend
from emotalk_fast.streaming.incremental import IncrementalEncoder
from emotalk_fast.streaming.settings import StreamSettings
from helpers import stream_all

SETTINGS = dict(hop_ms=200, lookahead_ms=200, context_ms=600)


class CountingEncoder(IncrementalEncoder):
    """PyTorch's incremental encoder, counting the new rows it encodes."""

    def __init__(self, rows: list, *args):
        super().__init__(*args)
        self.rows = rows

    def encode_inputs(self, *args, **kwargs):
        out = super().encode_inputs(*args, **kwargs)
        self.rows.append(out.rows["content"].hidden.shape[:2])
        return out


class CountingBackend(EncoderBackend):
    """A backend of its own: the CPU, float32, incremental encoding, streams only."""

    name, title = "counting", "counting"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), encodings=("incremental",),
                                offline=False)

    def prepare(self, model):
        self.rows = []  # (streams, new rows) of every hop it encoded
        return super().prepare(model)  # PyTorch's encoders, laid out as PyTorch's backend lays them

    def incremental_encoder(self, model, grid, slots, device, dtype):
        return CountingEncoder(self.rows, model, grid, slots, device, dtype)


@pytest.fixture(scope="module")
def animators():
    registry.register(CountingBackend)
    return (Animator.from_config("mini", seed=3, device="cpu", warn_random=False),
            Animator.from_config("mini", seed=3, warn_random=False, encoders="counting"))


def test_it_is_named_like_the_built_in_ones(animators):
    counting = animators[1]
    assert "counting" in registry.names() and isinstance(counting.encoder_backend, CountingBackend)
    assert counting.device.type == "cpu" and counting.encoders == "counting"  # "auto": where it runs


def test_a_stream_runs_through_it(animators):
    speech = np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.1
    torch_animator, counting = animators
    want = stream_all(torch_animator.stream(**SETTINGS), speech, [1600], 0)
    before = len(counting.encoder_backend.rows)
    got = stream_all(counting.stream(**SETTINGS), speech, [1600], 0)
    assert got.shape == want.shape and np.abs(got - want).max() == 0  # the same arithmetic
    assert len(counting.encoder_backend.rows) > before


def test_an_engine_batches_streams_through_it(animators):
    counting = animators[1]
    engine = counting.engine(max_streams=2, **SETTINGS)
    a, b = engine.open(), engine.open(person=4)
    speech = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    engine.push(a, speech)
    engine.push(b, speech)
    counting.encoder_backend.rows.clear()
    while engine.step():
        pass
    assert counting.encoder_backend.rows and counting.encoder_backend.rows[0][0] == 2  # both in one batch


def test_the_budget_times_it(animators):
    counting = animators[1]
    counting.encoder_backend.rows.clear()
    settings = counting.stream_settings(StreamSettings(**dict(SETTINGS, hop_ms="auto")))
    assert settings.hop_ms % 100 == 0 and counting.encoder_backend.rows  # "auto" measured its hops


def test_what_its_capabilities_exclude_is_refused(animators):
    counting = animators[1]
    with pytest.raises(ValueError, match="the counting encoders run incremental encoding: not encoding windowed"):
        counting.stream(**SETTINGS, encoding="windowed")
    with pytest.raises(ValueError, match="the counting encoders run a live stream's hops only"):
        counting.animate(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match=r"the counting encoders run on the CPU in float32: got cpu in bfloat16"):
        Animator.from_config("mini", device="cpu", dtype="bfloat16", warn_random=False, encoders="counting")
    with pytest.raises(TypeError, match="a subclass of EncoderBackend"):
        registry.register(object)
