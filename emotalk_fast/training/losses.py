"""EmoTalk's training loss: 1.0 L_cross + 1.0 L_self + 0.5 L_vel + 0.1 L_cls (paper weights).

- L_cross: MSE between the cross reconstruction (content of input12 + emotion of input21) and
  target11; only items that are real pseudo pairs count.
- L_self: MSE between the self reconstruction of input12 and target12.
- L_vel: MSE between frame-to-frame differences of prediction and target, summed over the
  reconstructions an item has (self, plus cross for pairs).
- L_cls: cross-entropy of input21's emotion logits against its label; unlabelled items skip it.

Every term is a mean over the items it applies to in the *global* batch: `item_terms` returns
per-batch sums and counts, and `combine` divides by counts that the caller has summed over all
ranks, so a data-parallel step equals a single-process step on the same global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossWeights  # noqa: F401  (re-exported: the weights of the terms below)

TERMS = ("cross", "self", "velocity", "cls")


def velocity(x: torch.Tensor) -> torch.Tensor:
    """[B, T, C] -> [B, T - 1, C] frame-to-frame differences."""
    return x[:, 1:] - x[:, :-1]


def mse_per_item(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, T, C] x 2 -> [B]; 0 for an empty time axis (a 1-frame clip has no velocity)."""
    if pred.shape[1] == 0:
        return pred.new_zeros(pred.shape[0]) + 0.0 * pred.sum()
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2))


def item_terms(out11, out12, logits, target11, target12, emotion, paired):
    """One forward's items -> (sums [4], counts [4]) over TERMS.

    out11/target11 [B, T11, 52], out12/target12 [B, T12, 52], logits [B, labels], emotion [B]
    (class index, -1 = none), paired [B] bool. Unpaired items may pass out11 = out12.
    """
    paired_f = paired.float()
    labelled = emotion >= 0
    cross = mse_per_item(out11, target11) * paired_f
    self_ = mse_per_item(out12, target12)
    vel = mse_per_item(velocity(out12), velocity(target12)) + \
        mse_per_item(velocity(out11), velocity(target11)) * paired_f
    cls = F.cross_entropy(logits.float(), emotion.clamp(min=0), reduction="none") * labelled.float()
    sums = torch.stack([cross.sum(), self_.sum(), vel.sum(), cls.sum()])
    counts = torch.stack([paired_f.sum(), torch.tensor(float(len(paired)), device=paired.device),
                          torch.tensor(float(len(paired)), device=paired.device), labelled.float().sum()])
    return sums, counts


def combine(sums: torch.Tensor, counts: torch.Tensor, weights: LossWeights):
    """Per-term means (sums / counts, 0 where no item applies) and the weighted total."""
    means = sums / counts.clamp(min=1.0)
    w = torch.tensor(weights.as_tuple(), device=sums.device, dtype=means.dtype)
    return (w * means).sum(), means
