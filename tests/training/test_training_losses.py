"""The training loss, term by term, against hand-computed values."""
import math

import torch

from emotalk_fast.training.losses import LossWeights, combine, item_terms, velocity

from helpers import assert_close


def test_terms_by_hand():
    # Two items, 3 frames, 1 channel (the loss does not care about 52).
    t = torch.tensor([[[0.0], [1.0], [2.0]], [[0.0], [0.0], [0.0]]])
    out12 = t + torch.tensor([[[1.0], [1.0], [1.0]], [[0.0], [2.0], [0.0]]])  # errors: 1,1,1 | 0,2,0
    out11 = t + torch.tensor([[[0.0], [3.0], [0.0]], [[9.0], [9.0], [9.0]]])  # item 1 is unpaired
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 0.0]])
    emotion, paired = torch.tensor([1, -1]), torch.tensor([True, False])
    sums, counts = item_terms(out11, out12, logits, t, t, emotion, paired)
    # cross: item 0 only, mean(0, 9, 0) = 3; self: 1 + 4/3; velocity: self diffs (0,0) | (2,-2) -> 0 + 4,
    # cross diffs of item 0 (3,-3) -> 9; cls: -log(3/4) for item 0 only.
    assert_close(sums, [3.0, 1 + 4 / 3, 4.0 + 9.0, -math.log(0.75)], 1e-6, "sums")
    assert_close(counts, [1, 2, 2, 1], 0, "counts")
    total, means = combine(sums, counts, LossWeights())
    assert_close(means, [3.0, (1 + 4 / 3) / 2, 13 / 2, -math.log(0.75)], 1e-6, "means")
    expected = 1.0 * 3.0 + 1.0 * (7 / 3) / 2 + 0.5 * 13 / 2 + 0.1 * -math.log(0.75)
    assert abs(float(total) - expected) < 1e-5
    total2, _ = combine(sums, counts, LossWeights(cross=0.0, self_recon=2.0, velocity=0.0, cls=1.0))
    assert abs(float(total2) - (2 * (7 / 3) / 2 - math.log(0.75))) < 1e-5


def test_no_labels_no_pairs_gives_zero_terms_with_gradient_path():
    out = torch.zeros(1, 4, 52, requires_grad=True)
    logits = torch.zeros(1, 7, requires_grad=True)
    sums, counts = item_terms(out, out, logits, torch.ones(1, 4, 52), torch.ones(1, 4, 52),
                              torch.tensor([-1]), torch.tensor([False]))
    total, means = combine(sums, counts, LossWeights())
    assert means[0] == 0 and means[3] == 0 and means[1] == 1.0
    total.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_velocity_and_single_frame():
    x = torch.tensor([[[1.0], [4.0], [9.0]]])
    assert velocity(x).flatten().tolist() == [3.0, 5.0]
    one = torch.ones(2, 1, 52)
    sums, _ = item_terms(one, one, torch.zeros(2, 7), one * 0, one * 0, torch.tensor([0, 1]), torch.tensor([True, True]))
    assert torch.isfinite(sums).all() and sums[2] == 0
