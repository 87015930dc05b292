"""The Audio2Face-3D 2.x gRPC protocol: message classes, names, and the mapping to EmoTalk.

The message classes are built at import from this package's own .proto files (protos/), which
use the service's package names and field numbers, compiled with grpcio-tools' protoc into a
private descriptor pool: no generated code to keep in step with the protobuf runtime, and no
clash with NVIDIA's own stubs should a process import both.
"""
from __future__ import annotations

import importlib.resources
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..config import BLENDSHAPE_NAMES

PROTO_DIR = Path(__file__).parent / "protos"
SERVICE_NAME = "nvidia_ace.services.a2f_controller.v1.A2FControllerService"
PROCESS_AUDIO_STREAM = f"/{SERVICE_NAME}/ProcessAudioStream"
DEFAULT_PORT = 52000  # the port Audio2Face-3D listens on

# The 52 ARKit channels in the spelling Audio2Face-3D uses (EyeBlinkLeft, JawOpen, ...).
A2F_BLENDSHAPE_NAMES: tuple[str, ...] = tuple(n[0].upper() + n[1:] for n in BLENDSHAPE_NAMES)
# EmoTalk's emotion labels -> Audio2Face-3D's emotion names (neutral has none).
A2F_EMOTION_NAMES = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy",
                     "sad": "sadness", "surprise": "amazement"}
EMOTION_AGGREGATE_KEY = "emotion_aggregate"
PCM_BITS = 16


def _compile_protos() -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    files = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protocol.desc"
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", "--include_imports",
                          f"--descriptor_set_out={out}", *files])
        if rc != 0:
            raise RuntimeError(f"protoc could not compile {PROTO_DIR} (exit {rc})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


_FILES = _compile_protos().file
_POOL = descriptor_pool.DescriptorPool()
for _file in _FILES:
    _POOL.Add(_file)
_CLASSES = message_factory.GetMessages(list(_FILES), pool=_POOL)

AudioHeader = _CLASSES["nvidia_ace.audio.v1.AudioHeader"]
Status = _CLASSES["nvidia_ace.status.v1.Status"]
EmotionWithTimeCode = _CLASSES["nvidia_ace.emotion_with_timecode.v1.EmotionWithTimeCode"]
EmotionAggregate = _CLASSES["nvidia_ace.emotion_aggregate.v1.EmotionAggregate"]
FloatArray = _CLASSES["nvidia_ace.a2f.v1.FloatArray"]
FaceParameters = _CLASSES["nvidia_ace.a2f.v1.FaceParameters"]
BlendShapeParameters = _CLASSES["nvidia_ace.a2f.v1.BlendShapeParameters"]
EmotionParameters = _CLASSES["nvidia_ace.a2f.v1.EmotionParameters"]
EmotionPostProcessingParameters = _CLASSES["nvidia_ace.a2f.v1.EmotionPostProcessingParameters"]
AudioWithEmotion = _CLASSES["nvidia_ace.a2f.v1.AudioWithEmotion"]
SkelAnimationHeader = _CLASSES["nvidia_ace.animation_data.v1.SkelAnimationHeader"]
FloatArrayWithTimeCode = _CLASSES["nvidia_ace.animation_data.v1.FloatArrayWithTimeCode"]
SkelAnimation = _CLASSES["nvidia_ace.animation_data.v1.SkelAnimation"]
AudioWithTimeCode = _CLASSES["nvidia_ace.animation_data.v1.AudioWithTimeCode"]
AnimationData = _CLASSES["nvidia_ace.animation_data.v1.AnimationData"]
AudioStream = _CLASSES["nvidia_ace.controller.v1.AudioStream"]
AudioStreamHeader = _CLASSES["nvidia_ace.controller.v1.AudioStreamHeader"]
Event = _CLASSES["nvidia_ace.controller.v1.Event"]
AnimationDataStreamHeader = _CLASSES["nvidia_ace.controller.v1.AnimationDataStreamHeader"]
AnimationDataStream = _CLASSES["nvidia_ace.controller.v1.AnimationDataStream"]
END_OF_A2F_AUDIO_PROCESSING = _POOL.FindEnumTypeByName("nvidia_ace.controller.v1.EventType") \
    .values_by_name["END_OF_A2F_AUDIO_PROCESSING"].number


def pack_any(target, message) -> None:
    """Fill a google.protobuf.Any with `message` (type URL as Any.Pack writes it)."""
    target.type_url = f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    target.value = message.SerializeToString()


def unpack_any(source, message_class):
    """The message in a google.protobuf.Any, or None when it holds another type."""
    if source.type_url.rsplit("/", 1)[-1] != message_class.DESCRIPTOR.full_name:
        return None
    return message_class.FromString(source.value)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM -> float32 in [-1, 1) (an even number of bytes)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> little-endian 16-bit PCM (rounded, clipped)."""
    scaled = np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def emotion_probabilities(labels, logits: np.ndarray) -> dict[str, float]:
    """The emotion classifier's softmax under A2F's names (labels without one are left out)."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return {A2F_EMOTION_NAMES[label]: float(v) for label, v in zip(labels, p) if label in A2F_EMOTION_NAMES}


def read_pem(path: str | None) -> bytes | None:
    """The bytes of an optional PEM certificate or key (the TLS credentials both ends load)."""
    return None if path is None else Path(path).read_bytes()
