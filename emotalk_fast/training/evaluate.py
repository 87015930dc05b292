"""Evaluation: blendshape-space errors, and the paper's vertex metrics given a blendshape basis.

Vertex metrics need a mesh the 52 ARKit weights drive (not shipped: bring your own), as an .npz:
    neutral      [V, 3]      the rest mesh
    deltas       [52, V, 3]  per-blendshape offsets, in BLENDSHAPE_NAMES order
    lip_indices  [L]         lip-region vertex indices
    eye_indices  [E]         eye and forehead vertex indices (upper face)
vertices(w) = neutral + sum_k w_k * deltas_k, per frame. With e_v,t = ||v_pred - v_true||_2:
    LVE = mean over frames of max over lip vertices of e      (lip vertex error)
    EVE = mean over frames of max over eye/forehead vertices  (emotional vertex error)
    lip_l2 = mean over frames and lip vertices of e           (average lip error)
Frames of all clips are pooled (each frame counts once), as FaceFormer and EmoTalk report them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.model.config import BLENDSHAPE_NAMES, EmoTalkConfig
from emotalk_fast.errors import InvalidInput

from .data import Clip, load_audio, scan_clips

log = logging.getLogger("emotalk_fast.training")


def blendshape_errors(pred: np.ndarray, target: np.ndarray) -> dict:
    """[T, 52] x 2 -> overall and per-channel MSE and MAE (channels by ARKit name)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 2:
        raise InvalidInput(f"prediction {pred.shape} and target {target.shape} must be equal [T, C] arrays")
    err = pred - target
    names = BLENDSHAPE_NAMES if pred.shape[1] == len(BLENDSHAPE_NAMES) else [str(i) for i in range(pred.shape[1])]
    mse_c, mae_c = (err**2).mean(0), np.abs(err).mean(0)
    return {"mse": float((err**2).mean()), "mae": float(np.abs(err).mean()),
            "mse_per_channel": dict(zip(names, mse_c.tolist())), "mae_per_channel": dict(zip(names, mae_c.tolist()))}


@dataclass(frozen=True)
class BlendshapeBasis:
    neutral: np.ndarray  # [V, 3]
    deltas: np.ndarray  # [52, V, 3]
    lip_indices: np.ndarray  # [L] int
    eye_indices: np.ndarray  # [E] int

    def __post_init__(self):
        V = self.neutral.shape[0]
        if self.neutral.shape != (V, 3) or self.deltas.ndim != 3 or self.deltas.shape[1:] != (V, 3):
            raise InvalidInput(f"basis needs neutral [V, 3] and deltas [K, V, 3], got {self.neutral.shape} "
                               f"and {self.deltas.shape}")
        for name in ("lip_indices", "eye_indices"):
            idx = getattr(self, name)
            if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= V:
                raise InvalidInput(f"{name} must be a non-empty list of vertex indices in 0..{V - 1}")

    @classmethod
    def from_npz(cls, path: str | Path) -> "BlendshapeBasis":
        with np.load(path) as z:
            missing = {"neutral", "deltas", "lip_indices", "eye_indices"} - set(z.files)
            if missing:
                raise InvalidInput(f"{path}: basis .npz lacks {sorted(missing)} (has {z.files})")
            return cls(z["neutral"].astype(np.float64), z["deltas"].astype(np.float64),
                       z["lip_indices"].astype(np.int64), z["eye_indices"].astype(np.int64))

    def vertices(self, weights: np.ndarray) -> np.ndarray:
        """[T, K] blendshape weights -> [T, V, 3] meshes."""
        weights = np.asarray(weights, np.float64)
        if weights.shape[-1] != self.deltas.shape[0]:
            raise InvalidInput(f"{weights.shape[-1]} weights for a basis of {self.deltas.shape[0]} blendshapes")
        return self.neutral + np.einsum("tk,kvc->tvc", weights, self.deltas)


def vertex_errors(pred: np.ndarray, target: np.ndarray, basis: BlendshapeBasis) -> dict:
    """[T, 52] x 2 -> LVE, EVE and mean lip L2 error (mesh units) and the frame count."""
    e = np.linalg.norm(basis.vertices(pred) - basis.vertices(target), axis=-1)  # [T, V]
    lip, eye = e[:, basis.lip_indices], e[:, basis.eye_indices]
    return {"lve": float(lip.max(1).mean()), "eve": float(eye.max(1).mean()), "lip_l2": float(lip.mean()),
            "frames": len(e)}


def load_model(checkpoint: str | Path, preset: str | None = None, device: str = "cpu"):
    """A training output directory or a release-layout .pth -> reference model in eval mode.

    The config comes from `preset` when given, else a `config.json` beside the .pth, else the
    tensor shapes (release head counts).
    """
    from .reference import EmoTalkReference, load_release_weights
    from .train import RELEASE_NAME

    path = Path(checkpoint)
    if path.is_dir():
        path = path / RELEASE_NAME
    cfg, sd = ckpt.read_release_state_dict(path)
    if preset is not None:
        cfg = EmoTalkConfig.from_name(preset)
    model = EmoTalkReference(cfg)
    load_release_weights(model, sd)
    return model.to(device).eval()


@torch.no_grad()
def predict_clip(model, clip: Clip, device="cpu", default_level: int = 1, default_person: int = 0) -> np.ndarray:
    wave = torch.from_numpy(load_audio(clip.wav, clip.num_samples))[None].to(device)
    level = clip.labels.level if clip.labels else default_level
    person = clip.labels.person if clip.labels else default_person
    return model.predict(wave, level, person)["blendshapes"][0].float().cpu().numpy()


def evaluate(model, clips: list[Clip], basis: BlendshapeBasis | None = None, device="cpu",
             default_level: int = 1, default_person: int = 0) -> dict:
    """Errors pooled over all frames of all clips, plus a per-clip list."""
    preds, targets, per_clip = [], [], []
    for clip in clips:
        pred = predict_clip(model, clip, device, default_level, default_person)
        target = np.load(clip.npy)[: clip.num_frames].astype(np.float32)
        preds.append(pred)
        targets.append(target)
        row = {"clip": clip.stem, **{k: v for k, v in blendshape_errors(pred, target).items() if "per_channel" not in k}}
        if basis is not None:
            row.update({k: v for k, v in vertex_errors(pred, target, basis).items() if k != "frames"})
        per_clip.append(row)
    pred, target = np.concatenate(preds), np.concatenate(targets)
    report = {"clips": len(clips), "frames": len(pred), **blendshape_errors(pred, target)}
    if basis is not None:
        report.update({k: v for k, v in vertex_errors(pred, target, basis).items() if k != "frames"})
    report["per_clip"] = per_clip
    return report


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, basis: str | Path | None = None,
                        preset: str | None = None, device: str = "cpu", output: str | Path | None = None,
                        **scan_kw) -> dict:
    model = load_model(checkpoint, preset, device)
    clips = scan_clips(data_dir, labels=model.cfg.emotion_labels, **scan_kw)
    report = evaluate(model, clips, BlendshapeBasis.from_npz(basis) if basis else None, device)
    if output is not None:
        Path(output).write_text(json.dumps(report, indent=2))
    return report
