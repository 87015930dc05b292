"""What a training run is configured by: `TrainConfig`, the loss weights and the emotion table.

Imports no torch, so the CLI builds its options from these fields (their defaults and help
live here only) without loading the trainer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.errors import InvalidInput

# RAVDESS emotion names -> the release classifier's labels (override rows with --emotion-map).
DEFAULT_EMOTION_MAP: dict[str, str] = {
    "neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
    "fearful": "fear", "disgust": "disgust", "surprised": "surprise",
}


def option(default, help: str, choices: tuple | None = None):
    """A TrainConfig field that is also a command-line option (`--name-with-dashes`)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class LossWeights:
    cross: float = 1.0  # L_cross
    self_recon: float = 1.0  # L_self
    velocity: float = 0.5  # L_vel
    cls: float = 0.1  # L_cls

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.cross, self.self_recon, self.velocity, self.cls)


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str  # clips: <stem>.wav (16 kHz) + <stem>.npy [T, 52] at 30 fps
    output_dir: str  # checkpoints, training state and metrics
    preset: str = "emotalk"  # EmoTalkConfig preset for random initialisation ...
    init_checkpoint: str | None = None  # ... or a release-layout .pth to fine-tune (wins)
    steps: int = option(1000, 'optimiser steps in the whole run')
    batch_size: int = option(1, 'global batch in pseudo pairs, split evenly over ranks')
    lr: float = option(1e-4, 'peak AdamW learning rate')
    weight_decay: float = option(0.0, 'AdamW weight decay')
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = option(0, 'linear warm-up from 0')
    schedule: str = option("constant", "after warm-up: constant, or cosine to min_lr_ratio * lr",
                           ("constant", "cosine"))
    min_lr_ratio: float = option(0.0, "the cosine schedule's final learning rate, as a fraction of lr")
    grad_clip: float = option(1.0, 'max global gradient norm; 0 disables clipping')
    dropout: float = option(0.1, 'every dropout in encoders and decoder (0 for exact DDP tests)')
    layerdrop: float = option(0.0, "wav2vec2 LayerDrop; > 0 needs DDP's find_unused_parameters")
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU (always float32)
    seed: int = option(0, 'seed of the initialisation, the data order and dropout')
    cross: bool = True  # pseudo-pair cross reconstruction; False trains self-reconstruction only
    random_crop_s: float = option(0.0, "train on random spans of each clip at least this many seconds "
                                  "long (0: whole clips, as the release); such a model streams closer "
                                  "to offline")
    loss: LossWeights = field(default_factory=LossWeights)
    emotion_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EMOTION_MAP))
    max_crop_frames: int = option(1, 'audio/target length mismatch allowed per clip')
    on_mismatch: str = option("error", "beyond that: error, or skip the clip (reported)", ("error", "skip"))
    default_level: int = option(1, "emotion level of unlabelled clips (the release demo's value)")
    default_person: int = option(0, "speaking style of unlabelled clips (the release demo's value)")
    log_every: int = option(10, 'steps between progress lines')
    checkpoint_every: int = option(500, 'steps between checkpoints (and one at the end)')
    export_pretrained: bool = True  # also write config.json + model.safetensors
    num_workers: int = option(0, 'DataLoader workers per rank')
    device: str = option("auto", "auto: cuda:LOCAL_RANK when CUDA is available, else cpu")

    def __post_init__(self):
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossWeights(**self.loss))
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInput(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.schedule not in ("constant", "cosine"):
            raise InvalidInput(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.random_crop_s < 0:
            raise InvalidInput(f"random_crop_s must be >= 0 (0: whole clips), got {self.random_crop_s}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.layerdrop < 1.0:
            raise InvalidInput("dropout and layerdrop must be in [0, 1)")
        if self.init_checkpoint is None:
            EmoTalkConfig.from_name(self.preset)  # raises with the list of presets

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
