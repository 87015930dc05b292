"""Model configuration: frozen dataclasses, named presets, and the release's constants."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput

SAMPLE_RATE = 16_000  # Hz; both wav2vec2 encoders were trained on 16 kHz audio
FPS = 30  # output frame rate of the blendshape curves
ENCODER_FPS = 50  # wav2vec2's CNN front end emits one frame per 20 ms
# Decoder implementations a user may ask for: "auto" is Triton on CUDA, PyTorch elsewhere.
BACKENDS = ("auto", "torch", "triton")

# ARKit blendshape names in the order of the model's 52 output channels.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)

# Labels of the release's emotion classifier (r-f/wav2vec-english-speech-emotion-recognition),
# used when a checkpoint's config does not name them.
DEFAULT_EMOTION_LABELS: tuple[str, ...] = (
    "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise",
)


@dataclass(frozen=True)
class EncoderConfig:
    """One wav2vec2 'stable layer norm' encoder (Hugging Face Wav2Vec2Config field meanings)."""

    hidden_size: int = 1024  # transformer width
    num_layers: int = 24  # pre-norm transformer layers
    num_heads: int = 16  # attention heads (head_dim = hidden_size / num_heads)
    intermediate_size: int = 4096  # feed-forward width
    conv_dim: tuple[int, ...] = (512,) * 7  # CNN front-end channels per layer
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)  # samples / frames per tap window
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # product 320 = 20 ms at 16 kHz
    conv_bias: bool = True
    num_pos_conv_taps: int = 128  # positional convolution kernel size
    num_pos_conv_groups: int = 16
    layer_norm_eps: float = 1e-5
    num_labels: int = 0  # >0 adds the mean-pooled classifier head (emotion encoder)
    lm_head_size: int = 32  # rows of the unused CTC head stored in release checkpoints

    def __post_init__(self):
        object.__setattr__(self, "conv_dim", tuple(self.conv_dim))
        object.__setattr__(self, "conv_kernel", tuple(self.conv_kernel))
        object.__setattr__(self, "conv_stride", tuple(self.conv_stride))
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise InvalidInput("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.hidden_size % self.num_heads:
            raise InvalidInput(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.hidden_size % self.num_pos_conv_groups:
            raise InvalidInput("hidden_size must be divisible by num_pos_conv_groups")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def receptive_field(self) -> int:
        """Fewest samples that give one CNN output frame (400 for wav2vec2)."""
        field_, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field_ += (k - 1) * jump
            jump *= s
        return field_

    def num_cnn_frames(self, num_samples: int) -> int:
        """Output length of the CNN front end for `num_samples` input samples."""
        length = num_samples
        for k, s in zip(self.conv_kernel, self.conv_stride):
            length = (length - k) // s + 1
        return length

    def to_hf_dict(self) -> dict[str, Any]:
        """The equivalent Hugging Face Wav2Vec2Config fields (for the reference model)."""
        d = {
            "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "intermediate_size": self.intermediate_size,
            "conv_dim": list(self.conv_dim), "conv_kernel": list(self.conv_kernel),
            "conv_stride": list(self.conv_stride), "conv_bias": self.conv_bias,
            "feat_extract_norm": "layer", "do_stable_layer_norm": True,
            "num_conv_pos_embeddings": self.num_pos_conv_taps,
            "num_conv_pos_embedding_groups": self.num_pos_conv_groups,
            "hidden_act": "gelu", "layer_norm_eps": self.layer_norm_eps,
            "vocab_size": self.lm_head_size + 1,
        }
        if self.num_labels:
            d.update(num_labels=self.num_labels, pooling_mode="mean", final_dropout=0.0)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        """Read Hugging Face Wav2Vec2Config field names (as in the oracle and release configs)."""
        if d.get("feat_extract_norm", "layer") != "layer" or not d.get("do_stable_layer_norm", True):
            raise InvalidInput("only the wav2vec2-large 'stable layer norm' encoder variant is supported")
        return cls(
            hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
            conv_dim=tuple(d["conv_dim"]), conv_kernel=tuple(d["conv_kernel"]),
            conv_stride=tuple(d["conv_stride"]), conv_bias=d.get("conv_bias", True),
            num_pos_conv_taps=d["num_conv_pos_embeddings"],
            num_pos_conv_groups=d["num_conv_pos_embedding_groups"],
            layer_norm_eps=d.get("layer_norm_eps", 1e-5), num_labels=d.get("num_labels", 0),
            lm_head_size=d.get("vocab_size", 33) - 1,
        )


@dataclass(frozen=True)
class DecoderConfig:
    """EmoTalk's one-layer transformer decoder and the maps that feed it."""

    content_dim: int = 512  # content features after audio_feature_map_cont
    emotion_dim: int = 256  # emotion features after audio_feature_map_emo2
    style_dim: int = 32  # width of each of the level and person embeddings
    num_levels: int = 2  # emotion levels (one-hot)
    num_persons: int = 24  # speaking styles (one-hot; the RAVDESS actors)
    num_heads: int = 4
    ff_dim: int = 832  # feed-forward width of the decoder layer
    num_blendshapes: int = 52
    period: int = 30  # frames per step of the periodic causal bias (1 s at 30 fps)
    layer_norm_eps: float = 1e-5
    ppe: bool = False  # paper's periodic positional encoding; the release does not apply it

    def __post_init__(self):
        if self.feature_dim % self.num_heads:
            raise InvalidInput(f"feature_dim {self.feature_dim} not divisible by num_heads {self.num_heads}")
        if self.period < 1:
            raise InvalidInput("period must be >= 1")

    @property
    def feature_dim(self) -> int:
        """Decoder width: concat[content, emotion, level, person] (832 in the release)."""
        return self.content_dim + self.emotion_dim + 2 * self.style_dim

    @property
    def head_dim(self) -> int:
        return self.feature_dim // self.num_heads

    def alibi_slopes(self) -> list[float]:
        """ALiBi head slopes for a power-of-two head count (1/4, 1/16, 1/64, 1/256 for 4 heads)."""
        n = self.num_heads
        if n & (n - 1):
            raise InvalidInput("ALiBi slopes are defined here for power-of-two head counts only")
        start = 2 ** (-(2 ** -(n.bit_length() - 1 - 3)))
        return [start * start**i for i in range(n)]


@dataclass(frozen=True)
class EmoTalkConfig:
    content: EncoderConfig = field(default_factory=EncoderConfig)
    emotion: EncoderConfig = field(default_factory=lambda: EncoderConfig(num_labels=7))
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    emotion_labels: tuple[str, ...] = DEFAULT_EMOTION_LABELS

    def __post_init__(self):
        object.__setattr__(self, "emotion_labels", tuple(self.emotion_labels))
        if self.emotion.num_labels != len(self.emotion_labels):
            raise InvalidInput(
                f"emotion encoder has {self.emotion.num_labels} labels but "
                f"{len(self.emotion_labels)} label names were given"
            )
        if self.content.num_labels:
            raise InvalidInput("the content encoder has no classifier (num_labels must be 0)")

    @classmethod
    def from_name(cls, name: str) -> "EmoTalkConfig":
        if name not in PRESETS:
            raise InvalidInput(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": "emotalk",
            "content_encoder": self.content.to_hf_dict(),
            "emotion_encoder": self.emotion.to_hf_dict(),
            "decoder": dataclasses.asdict(self.decoder),
            "emotion_labels": list(self.emotion_labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmoTalkConfig":
        if d.get("model_type", "emotalk") != "emotalk":
            raise InvalidInput(f"not an EmoTalk config (model_type {d.get('model_type')!r})")
        dec = d.get("decoder", {})
        known = {f.name for f in dataclasses.fields(DecoderConfig)}
        unknown = set(dec) - known
        if unknown:
            raise InvalidInput(f"unknown decoder config fields: {sorted(unknown)}")
        emotion = EncoderConfig.from_hf_dict(d["emotion_encoder"])
        return cls(
            content=EncoderConfig.from_hf_dict(d["content_encoder"]),
            emotion=emotion,
            decoder=DecoderConfig(**dec),
            emotion_labels=tuple(d.get("emotion_labels") or DEFAULT_EMOTION_LABELS[: emotion.num_labels]),
        )


def _encoder_pair(**kw) -> tuple[EncoderConfig, EncoderConfig]:
    return EncoderConfig(**kw), EncoderConfig(num_labels=7, **kw)


PRESETS: dict[str, EmoTalkConfig] = {
    # The released model: two wav2vec2-large encoders, 640.6 M parameters.
    "emotalk": EmoTalkConfig(),
    # The oracle's reduced model: release decoder, 2-layer encoders with thin CNNs.
    "mini": EmoTalkConfig(*_encoder_pair(
        num_layers=2, intermediate_size=256, conv_dim=(64,) * 7, num_pos_conv_taps=16)),
    # Small enough for fast unit tests; every structural feature kept.
    "tiny": EmoTalkConfig(
        *_encoder_pair(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                       conv_dim=(32,) * 7, num_pos_conv_taps=16, num_pos_conv_groups=4),
        decoder=DecoderConfig(content_dim=48, emotion_dim=24, style_dim=12, ff_dim=64),
    ),
}
