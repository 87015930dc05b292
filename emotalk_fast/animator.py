"""The user-facing API: load a checkpoint once, turn speech into blendshape animation."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .audio import prepare_audio
from .config import BLENDSHAPE_NAMES, FPS, EmoTalkConfig
from .export import save_blendshapes
from .model import EmoTalk, num_emotion_frames
from .postprocess import postprocess as postprocess_curves

BACKENDS = ("auto", "torch", "triton")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@dataclass
class Animation:
    """Blendshape curves for one clip."""

    blendshapes: np.ndarray  # float32 [T, 52], unclamped as the model outputs them
    emotion_logits: np.ndarray  # float32 [labels], the emotion classifier's output for the clip
    emotion_labels: tuple[str, ...]
    names: tuple[str, ...] = BLENDSHAPE_NAMES  # ARKit name of each column
    fps: int = FPS

    @property
    def num_frames(self) -> int:
        return int(self.blendshapes.shape[0])

    @property
    def duration(self) -> float:
        """Seconds covered by the frames."""
        return self.num_frames / self.fps

    @property
    def emotion(self) -> dict[str, float]:
        """Label -> probability (softmax of the logits)."""
        z = self.emotion_logits.astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        return {label: float(v) for label, v in zip(self.emotion_labels, p)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write .npy ([T, 52] float32), .csv (frame, time, 52 names) or .json."""
        return save_blendshapes(path, self.blendshapes, self.names, self.fps, self.emotion)


def resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use device='cpu' or 'auto')")
    return device


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unsupported dtype {dtype!r}: use one of {sorted(_DTYPES)} or a torch dtype")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
    if backend == "auto":
        return "torch"
    if backend == "triton":
        raise ValueError("backend='triton' is not available in this build; use backend='torch'")
    return backend


class Animator:
    """Speech -> 52 ARKit blendshapes at 30 fps with EmoTalk.

    >>> animator = Animator.from_pretrained("EmoTalk.pth")
    >>> anim = animator.animate("speech.wav", level=1, person=0)
    >>> anim.save("speech.csv")
    """

    def __init__(self, model: EmoTalk, device="auto", dtype=None, backend="auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.backend = resolve_backend(backend, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.config: EmoTalkConfig = model.cfg

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="auto", dtype=None, backend="auto",
                        config: EmoTalkConfig | None = None) -> "Animator":
        """Load a released `EmoTalk.pth` or a `save_pretrained` directory.

        `config` is needed only for a release checkpoint whose head counts differ from the
        release (sizes are read off the tensor shapes).
        """
        cfg, state_dict = ckpt.load_any(path, config)
        return cls(cls._build(cfg, state_dict), device, dtype, backend)

    @classmethod
    def from_config(cls, config: EmoTalkConfig | str = "emotalk", seed: int = 0, device="auto", dtype=None,
                    backend="auto") -> "Animator":
        """Random weights by the oracle rule (for tests and benchmarks: speed does not depend on weights)."""
        cfg = EmoTalkConfig.from_name(config) if isinstance(config, str) else config
        state_dict = ckpt.release_to_fast(ckpt.random_release_state_dict(cfg, seed), cfg)
        return cls(cls._build(cfg, state_dict), device, dtype, backend)

    @staticmethod
    def _build(cfg: EmoTalkConfig, state_dict: dict[str, torch.Tensor]) -> EmoTalk:
        # Parameters start on the meta device and take the loaded tensors as they are, so
        # start-up costs no random initialisation and no extra copy.
        with torch.device("meta"):
            model = EmoTalk(cfg)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"checkpoint does not fit the model: {e}") from None
        model.share_identical_front_ends()
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write this model as config.json + model.safetensors (float32 on disk)."""
        state = {k: v.float() for k, v in self.model.state_dict().items()}
        return ckpt.save_pretrained(state, self.config, directory)

    # --- inference ------------------------------------------------------------------------
    @property
    def min_samples(self) -> int:
        """Shortest 16 kHz input both encoders accept (the emotion branch needs >= 1 frame)."""
        n = max(self.config.content.receptive_field, self.config.emotion.receptive_field)
        while min(num_emotion_frames(self.config.emotion.num_cnn_frames(n)),
                  self.config.content.num_cnn_frames(n)) < 1:
            n += 1
        return n

    def _check_style(self, level, person) -> tuple[int, int]:
        dec = self.config.decoder
        for name, value, count in (("level", level, dec.num_levels), ("person", person, dec.num_persons)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
                raise ValueError(f"{name} must be an integer in 0..{count - 1}, got {value!r}")
        return int(level), int(person)

    def animate(self, audio, sample_rate: int | None = None, level: int = 1, person: int = 0,
                postprocess: bool = False, seed: int | None = None) -> Animation:
        """Animate one clip.

        audio: path, or float array/tensor [N] or [channels, N] at `sample_rate` (default 16 kHz).
        level: emotion level 0 or 1. person: speaking style 0..23.
        postprocess: the release demo's smoothing + blinks (deterministic for a given seed).
        """
        return self.animate_batch([audio], sample_rate, level, person, postprocess, seed)[0]

    def animate_batch(self, audios, sample_rate: int | None = None, level=1, person=0,
                      postprocess: bool = False, seed: int | None = None) -> list[Animation]:
        """Animate clips of different lengths in one padded batch; each result equals its
        single-clip `animate` (within float rounding). level/person: one value or one per clip."""
        if isinstance(audios, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise TypeError("animate_batch takes a list of clips; use animate() for one clip")
        audios = list(audios)
        if not audios:
            raise ValueError("animate_batch needs at least one clip")
        levels = self._per_clip("level", level, len(audios))
        persons = self._per_clip("person", person, len(audios))
        styles = [self._check_style(lv, p) for lv, p in zip(levels, persons)]
        clips = [prepare_audio(a, sample_rate, self.min_samples) for a in audios]

        lengths = torch.tensor([len(c) for c in clips])
        wave = torch.zeros(len(clips), int(lengths.max()))
        for i, c in enumerate(clips):
            wave[i, : len(c)] = torch.from_numpy(c)
        with torch.inference_mode():
            out = self.model(wave.to(self.device), lengths.to(self.device),
                             torch.tensor([s[0] for s in styles], device=self.device),
                             torch.tensor([s[1] for s in styles], device=self.device))
        blendshapes = out.blendshapes.float().cpu().numpy()
        logits = out.emotion_logits.float().cpu().numpy()
        results = []
        for i, t in enumerate(out.frames):
            curves = blendshapes[i, :t]
            if postprocess:
                curves = postprocess_curves(curves, None if seed is None else seed + i)
            results.append(Animation(np.ascontiguousarray(curves), logits[i], self.config.emotion_labels))
        return results

    @staticmethod
    def _per_clip(name: str, value, n: int) -> list:
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} clips")
            return list(value)
        return [value] * n
