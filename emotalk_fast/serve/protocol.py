"""The Audio2Face-3D 2.x gRPC protocol, pure: message classes, names, header parsing, the
mapping of EmoTalk's frames and emotions to reply messages. No I/O, no engine, no tensors.

The message classes come from protos/a2f.desc, the compiled descriptor set of this package's
own .proto files (protos/*.proto: the service's package names and field numbers), loaded into a
private descriptor pool on first use: no protoc at run time, no generated code to keep in step
with the protobuf runtime, and no clash with NVIDIA's own stubs in the same process.
tests/serve/test_protocol.py recompiles the .proto files and checks a2f.desc is current.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.audio import check_rate
from ..model.config import BLENDSHAPE_NAMES, FPS
from ..errors import InvalidInput

PROTO_DIR = Path(__file__).parent / "protos"
DESCRIPTOR_SET = PROTO_DIR / "a2f.desc"  # protoc --include_imports --descriptor_set_out of PROTO_DIR
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

# Each message class's short name -> its full protobuf name (loaded on first use).
_MESSAGES = {
    "AudioHeader": "nvidia_ace.audio.v1.AudioHeader",
    "Status": "nvidia_ace.status.v1.Status",
    "EmotionWithTimeCode": "nvidia_ace.emotion_with_timecode.v1.EmotionWithTimeCode",
    "EmotionAggregate": "nvidia_ace.emotion_aggregate.v1.EmotionAggregate",
    "FloatArray": "nvidia_ace.a2f.v1.FloatArray",
    "FaceParameters": "nvidia_ace.a2f.v1.FaceParameters",
    "BlendShapeParameters": "nvidia_ace.a2f.v1.BlendShapeParameters",
    "EmotionParameters": "nvidia_ace.a2f.v1.EmotionParameters",
    "EmotionPostProcessingParameters": "nvidia_ace.a2f.v1.EmotionPostProcessingParameters",
    "AudioWithEmotion": "nvidia_ace.a2f.v1.AudioWithEmotion",
    "SkelAnimationHeader": "nvidia_ace.animation_data.v1.SkelAnimationHeader",
    "FloatArrayWithTimeCode": "nvidia_ace.animation_data.v1.FloatArrayWithTimeCode",
    "SkelAnimation": "nvidia_ace.animation_data.v1.SkelAnimation",
    "AudioWithTimeCode": "nvidia_ace.animation_data.v1.AudioWithTimeCode",
    "AnimationData": "nvidia_ace.animation_data.v1.AnimationData",
    "AudioStream": "nvidia_ace.controller.v1.AudioStream",
    "AudioStreamHeader": "nvidia_ace.controller.v1.AudioStreamHeader",
    "Event": "nvidia_ace.controller.v1.Event",
    "AnimationDataStreamHeader": "nvidia_ace.controller.v1.AnimationDataStreamHeader",
    "AnimationDataStream": "nvidia_ace.controller.v1.AnimationDataStream",
}
_loaded: dict = {}


def _load() -> dict:
    """The message classes and enum values, from the committed descriptor set (once)."""
    if not _loaded:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
        pool = descriptor_pool.DescriptorPool()
        for file in files:
            pool.Add(file)
        classes = message_factory.GetMessages(list(files), pool=pool)
        _loaded.update({short: classes[full] for short, full in _MESSAGES.items()})
        _loaded["END_OF_A2F_AUDIO_PROCESSING"] = pool.FindEnumTypeByName("nvidia_ace.controller.v1.EventType") \
            .values_by_name["END_OF_A2F_AUDIO_PROCESSING"].number
    return _loaded


def __getattr__(name: str):  # PEP 562: pb.AudioStream etc. load the descriptors on first use
    if name in _MESSAGES or name == "END_OF_A2F_AUDIO_PROCESSING":
        return _load()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StreamError(Exception):
    """What was wrong with a client's stream: it ends that stream with a Status ERROR message."""


class MalformedMessage(Exception):
    """Bytes that do not decode as an AudioStream: the call ends with INVALID_ARGUMENT."""


def parse_request(data: bytes):
    """The service's request deserializer: bytes -> AudioStream, or MalformedMessage."""
    from google.protobuf.message import DecodeError

    try:
        return _load()["AudioStream"].FromString(data)
    except DecodeError as e:
        raise MalformedMessage(f"a request that does not decode as an AudioStream message ({e})") from None


# --- the client's header --------------------------------------------------------------------
@dataclass(frozen=True)
class StreamStyle:
    """What a client's AudioStreamHeader asks of the animation."""

    sample_rate: int
    level: object  # 1.0 unless emotion_strength is given
    person: object  # an index, or weights over the persons
    multipliers: np.ndarray  # [52] A2F's bs_weight_multipliers by output column
    offsets: np.ndarray  # [52] bs_weight_offsets
    clamp: bool  # enable_clamping_bs_weight

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """EmoTalk's frames [k, 52] -> what the client asked for: scaled, offset, clamped."""
        values = frames * self.multipliers + self.offsets
        return np.clip(values, 0.0, 1.0) if self.clamp else values


_CHANNEL = {name: i for i, name in enumerate(A2F_BLENDSHAPE_NAMES)}  # A2F name -> output column


def parse_header(header, num_persons: int) -> StreamStyle:
    """An AudioStreamHeader -> StreamStyle, or StreamError saying what is not supported."""
    audio = header.audio_header
    if audio.audio_format != _load()["AudioHeader"].AUDIO_FORMAT_PCM:
        raise StreamError(f"audio_format {audio.audio_format} is not supported: only PCM (AUDIO_FORMAT_PCM)")
    if audio.bits_per_sample != PCM_BITS:
        raise StreamError(f"bits_per_sample {audio.bits_per_sample} is not supported: only 16-bit PCM")
    if audio.channel_count != 1:
        raise StreamError(f"channel_count {audio.channel_count} is not supported: only mono (1)")
    try:
        rate = check_rate(audio.samples_per_second)
    except InvalidInput as e:
        raise StreamError(str(e)) from None
    post = header.emotion_post_processing_params
    level = 1.0
    if post.HasField("emotion_strength"):
        level = float(post.emotion_strength)
        if not 0.0 <= level <= 1.0:
            raise StreamError(f"emotion_strength must be in [0, 1], got {level}")
    face = header.face_params
    person: object = 0
    if "person" in face.integer_params and "person_weights" in face.float_array_params:
        raise StreamError("give face_params person or person_weights, not both")
    if "person" in face.integer_params:
        person = int(face.integer_params["person"])
        if not 0 <= person < num_persons:
            raise StreamError(f"person must be in 0..{num_persons - 1}, got {person}")
    elif "person_weights" in face.float_array_params:
        weights = np.asarray(face.float_array_params["person_weights"].values, np.float64)
        if weights.shape != (num_persons,):
            raise StreamError(f"person_weights needs {num_persons} values, got {weights.size}")
        person = weights
    bs = header.blendshape_params
    multipliers, offsets = np.ones(len(A2F_BLENDSHAPE_NAMES)), np.zeros(len(A2F_BLENDSHAPE_NAMES))
    for values, target, kind in ((bs.bs_weight_multipliers, multipliers, "bs_weight_multipliers"),
                                 (bs.bs_weight_offsets, offsets, "bs_weight_offsets")):
        for name, value in values.items():
            if not math.isfinite(value):
                raise StreamError(f"{kind}[{name!r}] is {value}")
            if name in _CHANNEL:  # A2F names we do not output (its tongue shapes, say) are ignored
                target[_CHANNEL[name]] = value
    return StreamStyle(rate, level, person, multipliers, offsets,
                       bool(bs.enable_clamping_bs_weight))


# --- replies --------------------------------------------------------------------------------
def header_reply(audio_header, start_time: float):
    """The first reply: the animation's header, echoing the client's audio format."""
    m = _load()
    return m["AnimationDataStream"](animation_data_stream_header=m["AnimationDataStreamHeader"](
        audio_header=audio_header,
        skel_animation_header=m["SkelAnimationHeader"](blend_shapes=A2F_BLENDSHAPE_NAMES),
        start_time_code_since_epoch=start_time))


def animation_reply(first_frame: int, values: np.ndarray, audio: bytes, audio_time: float, input_emotions,
                    emotion: dict[str, float]):
    """Frames first_frame.. (values [k, 52], as the client asked for them), the client's audio for
    their span (echoed from audio_time s), the input emotions not yet echoed, and EmoTalk's
    emotion (A2F names) at the first frame."""
    m = _load()
    data = m["AnimationData"](
        skel_animation=m["SkelAnimation"](blend_shape_weights=[
            m["FloatArrayWithTimeCode"](time_code=f / FPS, values=row)
            for f, row in zip(range(first_frame, first_frame + len(values)), values)]),
        audio=m["AudioWithTimeCode"](time_code=audio_time, audio_buffer=audio))
    aggregate = m["EmotionAggregate"](
        input_emotions=input_emotions,
        a2f_smoothed_output=[m["EmotionWithTimeCode"](time_code=first_frame / FPS, emotion=emotion)])
    pack_any(data.metadata[EMOTION_AGGREGATE_KEY], aggregate)
    return m["AnimationDataStream"](animation_data=data)


def end_replies() -> list:
    """The last replies of a stream that succeeded: the end-of-processing event, SUCCESS."""
    m = _load()
    return [m["AnimationDataStream"](event=m["Event"](event_type=m["END_OF_A2F_AUDIO_PROCESSING"])),
            m["AnimationDataStream"](status=m["Status"](code=m["Status"].SUCCESS, message="done"))]


def error_reply(message: str):
    """The last reply of a stream that failed (the protocol's way: a Status ERROR message)."""
    m = _load()
    return m["AnimationDataStream"](status=m["Status"](code=m["Status"].ERROR, message=message))


# --- encodings ------------------------------------------------------------------------------
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
