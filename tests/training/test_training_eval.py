"""Evaluation metrics on a hand-made blendshape basis, where every value is known."""
import numpy as np
import pytest

from emotalk_fast.training.evaluate import BlendshapeBasis, blendshape_errors, vertex_errors


def _basis() -> BlendshapeBasis:
    # 4 vertices; blendshape 0 moves vertex 0 by (1, 0, 0); blendshape 1 moves vertex 1 by
    # (0, 2, 0) and vertex 2 by (0, 0, 3). Lips: vertices 0, 1. Eyes/forehead: 2, 3.
    neutral = np.arange(12, dtype=np.float64).reshape(4, 3)
    deltas = np.zeros((52, 4, 3))
    deltas[0, 0] = (1, 0, 0)
    deltas[1, 1] = (0, 2, 0)
    deltas[1, 2] = (0, 0, 3)
    return BlendshapeBasis(neutral, deltas, np.array([0, 1]), np.array([2, 3]))


def test_vertex_metrics_by_hand(tmp_path):
    pred = np.zeros((2, 52))
    pred[0, 0] = 0.5  # frame 0: vertex 0 off by 0.5
    pred[1, 1] = 1.0  # frame 1: vertex 1 off by 2, vertex 2 off by 3
    target = np.zeros((2, 52))
    got = vertex_errors(pred, target, _basis())
    assert got["lve"] == pytest.approx((0.5 + 2.0) / 2)  # max over lips per frame, mean over frames
    assert got["eve"] == pytest.approx((0.0 + 3.0) / 2)
    assert got["lip_l2"] == pytest.approx((0.5 + 0 + 0 + 2.0) / 4)
    # A shared offset of both sequences cancels; the .npz round trip gives the same numbers.
    b = _basis()
    path = tmp_path / "basis.npz"
    np.savez(path, neutral=b.neutral, deltas=b.deltas, lip_indices=b.lip_indices, eye_indices=b.eye_indices)
    again = vertex_errors(pred + 0.3, target + 0.3, BlendshapeBasis.from_npz(path))
    assert again["lve"] == pytest.approx(got["lve"]) and again["eve"] == pytest.approx(got["eve"])
    np.testing.assert_allclose(b.vertices(pred)[1, 2], b.neutral[2] + (0, 0, 3))


def test_blendshape_errors_by_hand():
    pred, target = np.zeros((2, 52)), np.zeros((2, 52))
    pred[0, 0], pred[1, 1] = 0.5, -1.0
    got = blendshape_errors(pred, target)
    assert got["mse"] == pytest.approx((0.25 + 1.0) / 104)
    assert got["mae"] == pytest.approx(1.5 / 104)
    assert got["mse_per_channel"]["browDownLeft"] == pytest.approx(0.125)
    assert got["mae_per_channel"]["browDownRight"] == pytest.approx(0.5)
    assert got["mse_per_channel"]["tongueOut"] == 0


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="must be equal"):
        blendshape_errors(np.zeros((3, 52)), np.zeros((4, 52)))
    b = _basis()
    with pytest.raises(ValueError, match="lip_indices"):
        BlendshapeBasis(b.neutral, b.deltas, np.array([0, 7]), b.eye_indices)
    np.savez(tmp_path / "bad.npz", neutral=b.neutral, deltas=b.deltas)
    with pytest.raises(ValueError, match="lacks"):
        BlendshapeBasis.from_npz(tmp_path / "bad.npz")
