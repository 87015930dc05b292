"""The user-facing API: load a checkpoint once, turn speech into blendshape animation."""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .model import checkpoint as ckpt
from .io.audio import load_waveform, prepare_audio
from .backends.registry import DEFAULT as DEFAULT_ENCODERS, resolve as resolve_encoders
from .model.config import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE, EmoTalkConfig
from .model.style import Schedule, check_style
from .errors import InvalidInput, InvalidType
from .io.curves import save_blendshapes
from .model.emotalk import EmoTalk, num_emotion_frames, resample_frames
from .model.emotalk import num_frames as model_num_frames
from .model.postprocess import postprocess as postprocess_curves
from .runtime.device import resolve_backend, resolve_dtype
from .streaming.backend import EncoderBackend
from .streaming.settings import MAX_STREAMS, StreamSettings

# Clips longer than this are encoded through overlapping windows (streaming/encoders.py, encode_windowed), so memory
# and time grow linearly with length; shorter clips get exactly the offline computation.
LONG_AUDIO_S = 60.0
# 24 s windows, both encoders on each (no ramp, no emotion cadence of its own): per second of
# audio the offline rate (docs/long-audio.md)
LONG_WINDOW = StreamSettings(hop_ms=20_000, lookahead_ms=2_000, context_ms=2_000, emotion_hop_ms=20_000, ramp=False)
EMOTION_WINDOW_S = 1.0  # seconds per entry of Animation.emotion_timeline


class RandomWeightsWarning(UserWarning):
    """An Animator made with random weights: its output means nothing."""


@dataclass
class Animation:
    """Blendshape curves for one clip."""

    blendshapes: np.ndarray  # float32 [T, 52], unclamped as the model outputs them
    emotion_logits: np.ndarray  # float32 [labels], the emotion classifier's output for the clip
    emotion_labels: tuple[str, ...]
    names: tuple[str, ...] = BLENDSHAPE_NAMES  # ARKit name of each column
    fps: int = FPS
    # the classifier on each EMOTION_WINDOW_S of the emotion branch's frames [windows, labels]
    emotion_window_logits: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)  # written into .json outputs (e.g. random weights)

    def __repr__(self) -> str:
        top = max(self.emotion.items(), key=lambda kv: kv[1])
        return (f"Animation({self.num_frames} frames, {self.duration:.2f} s at {self.fps} fps, "
                f"emotion {top[0]} {top[1]:.2f})")

    @property
    def num_frames(self) -> int:
        return int(self.blendshapes.shape[0])

    @property
    def duration(self) -> float:
        """Seconds covered by the frames."""
        return self.num_frames / self.fps

    @property
    def emotion(self) -> dict[str, float]:
        """Label -> probability for the whole clip (softmax of the logits)."""
        return dict(zip(self.emotion_labels, _softmax(self.emotion_logits).tolist()))

    @property
    def emotion_timeline(self) -> list[tuple[float, dict[str, float]]]:
        """[(window start in seconds, label -> probability)], one per EMOTION_WINDOW_S."""
        if self.emotion_window_logits is None:
            return []
        return [(i * EMOTION_WINDOW_S, dict(zip(self.emotion_labels, _softmax(z).tolist())))
                for i, z in enumerate(self.emotion_window_logits)]

    def save(self, path: str | os.PathLike, format: str | None = None, clamp: bool = False) -> Path:
        """Write .npy ([T, 52] float32), .csv (frame, time, 52 names) or .json.

        The values are the model's, unclamped (they stray a little outside [0, 1]); clamp=True
        writes them clamped to [0, 1], as rigs expect. format="livelinkface": a .csv as Unreal's
        Live Link Face app records it (see livelink.py; always clamped).
        """
        curves = np.clip(self.blendshapes, 0.0, 1.0) if clamp else self.blendshapes
        return save_blendshapes(path, curves, self.names, self.fps, self.emotion, format=format,
                                metadata=self.metadata)

    def plot(self, audio=None, sample_rate: int | None = None):
        """A matplotlib Figure: the waveform (a path, or samples at `sample_rate`), the curves
        that matter and the emotion timeline (needs the [preview] extra)."""
        from .io.preview import plot

        wave, rate = load_waveform(audio, sample_rate)
        return plot(self.blendshapes, self.names, self.fps, wave, rate, self.emotion_timeline)

    def save_preview(self, path: str | os.PathLike, audio=None, sample_rate: int | None = None) -> Path:
        """.png (the plot), .mp4 (a 2D face beside the curves, with the audio) or .gif (see preview.py)."""
        from .io.preview import save_preview

        return save_preview(path, self.blendshapes, self.names, self.fps, audio, sample_rate, self.emotion_timeline)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


@dataclass
class _Clip:
    """One clip's validated inputs."""

    samples: np.ndarray  # 16 kHz mono
    level: np.ndarray  # weights [2], or [T, 2] under a schedule
    person: np.ndarray  # weights [24], or [T, 24]
    frames: int
    emotion_samples: np.ndarray | None = None  # emotion reference, 16 kHz mono


def build_model(cfg: EmoTalkConfig, state_dict: dict[str, torch.Tensor]) -> EmoTalk:
    """EmoTalk from weights in this library's layout, loaded strictly."""
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


class Animator:
    """Speech -> 52 ARKit blendshapes at 30 fps with EmoTalk.

    >>> animator = Animator.from_pretrained("EmoTalk.pth")
    >>> anim = animator.animate("speech.wav", level=1, person=0)
    >>> anim.save("speech.csv")
    """

    def __init__(self, model: EmoTalk, device="auto", dtype=None, backend="auto",
                 encoders: str | EncoderBackend = DEFAULT_ENCODERS):
        """encoders: how the two wav2vec2 encoders run, a name in backends/registry.py (or a
        backend object): "torch" (PyTorch), "int8" (their transformer layers as int8 GEMMs; CPU,
        float32; opt-in: it changes the output), "openvino" (compiled by OpenVINO; CPU, float32;
        the same arithmetic; streams windowed) or "onnx" (a stream's incremental encoders in ONNX
        Runtime; CPU, float32; streams only). Resolved once, here, and handed to every stream."""
        self.encoder_backend = resolve_encoders(encoders)
        self.device = self.encoder_backend.resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.encoder_backend.verify(self.device, self.dtype)
        self.backend = resolve_backend(backend, self.device, self.dtype)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        model.decoder.set_backend(self.backend)  # the encoders are PyTorch (SDPA) either way
        self.model = self.encoder_backend.prepare(model)  # the model with the encoders it runs
        self.encoders = self.encoder_backend.name
        self.config: EmoTalkConfig = model.cfg

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        dtype = str(self.dtype).replace("torch.", "")
        return (f"Animator({params / 1e6:.1f} M parameters, device {self.device}, {dtype}"
                f", {self.encoders} encoders, decoder backend {self.backend})")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="auto", dtype=None, backend="auto",
                        config: EmoTalkConfig | None = None, encoders: str | EncoderBackend = DEFAULT_ENCODERS) -> "Animator":
        """Load a released `EmoTalk.pth` or a `save_pretrained` directory.

        `config` is needed only for a release checkpoint whose head counts differ from the
        release (sizes are read off the tensor shapes).
        """
        cfg, state_dict = ckpt.load_any(path, config)
        stored = {v.dtype for v in state_dict.values() if v.is_floating_point()}
        if dtype is None and stored and torch.float32 not in stored:
            name = "/".join(sorted(str(d).replace("torch.", "") for d in stored))
            warnings.warn(f"{path} is stored in {name} and runs in float32, the default (the reference's "
                          f"precision), cast at every start-up; pass dtype='{name}' (--dtype {name}) to run it as "
                          "stored, or dtype='auto'", stacklevel=2)
        return cls.from_state_dict(cfg, state_dict, device, dtype, backend, encoders)

    @classmethod
    def from_config(cls, config: EmoTalkConfig | str = "emotalk", seed: int = 0, device="auto", dtype=None,
                    backend="auto", rule: str = "fast", encoders: str | EncoderBackend = DEFAULT_ENCODERS,
                    warn_random: bool = True) -> "Animator":
        """Random weights (for tests and benchmarks: speed does not depend on weights), drawn by
        `rule` (see checkpoint.random_release_state_dict: "fast", or "oracle" as the fixtures).
        Warns once (RandomWeightsWarning) that the output means nothing, unless `warn_random` is
        False (the CLI says it in its own words)."""
        cfg = EmoTalkConfig.from_name(config) if isinstance(config, str) else config
        if warn_random:
            warnings.warn(f"Animator.from_config: RANDOM weights ({config if isinstance(config, str) else 'a config'}"
                          "): the output means nothing (for tests and benchmarks); load trained weights with "
                          "Animator.from_pretrained", RandomWeightsWarning, stacklevel=2)
        state_dict = ckpt.release_to_fast(ckpt.random_release_state_dict(cfg, seed, rule), cfg)
        return cls.from_state_dict(cfg, state_dict, device, dtype, backend, encoders)

    @classmethod
    def from_state_dict(cls, config: EmoTalkConfig, state_dict: dict[str, torch.Tensor], device="auto",
                        dtype=None, backend="auto", encoders: str | EncoderBackend = DEFAULT_ENCODERS) -> "Animator":
        """Weights already in memory, in this library's layout (`checkpoint.release_to_fast`
        maps a release state dict onto it). The tensors are used as they are, not copied,
        unless the device or dtype asks for a cast."""
        return cls(build_model(config, state_dict), device, dtype, backend, encoders)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write this model as config.json + model.safetensors (float32 on disk)."""
        state = {k: v.float() for k, v in self.model.state_dict().items()}
        return ckpt.save_pretrained(state, self.config, directory)

    # --- inference ------------------------------------------------------------------------
    @functools.cached_property
    def min_samples(self) -> int:
        """Shortest 16 kHz input both encoders accept (found once per Animator, not per call)."""
        return min_samples(self.config)

    def animate(self, audio, sample_rate: int | None = None, level=1, person=0, postprocess: bool = False,
                seed: int | None = None, *, emotion_reference=None, schedule=None, num_frames: int | None = None,
                long_audio_s: float | None = LONG_AUDIO_S, progress: Callable[[int, int], None] | None = None) -> Animation:
        """Animate one clip.

        audio: path, or float array/tensor [N] or [channels, N] at `sample_rate` (default 16 kHz).
        level: emotion level 0 or 1, or a float in [0, 1] blending the two.
        person: speaking style 0..23, or a mix {index: weight} / 24 weights summing to 1.
        postprocess: the release demo's smoothing + blinks (deterministic for a given seed).
        emotion_reference: take the emotion from this audio (path or array, same sample_rate)
            instead: content of `audio`, emotion of the reference resampled to its frames.
        schedule: a `Schedule` (or [(start_s, level, person), ...]) of style changes within the
            clip; it replaces `level` and `person`.
        num_frames: output frame count (default ceil(N / 16000 * 30)).
        long_audio_s: clips longer than this many seconds are encoded in overlapping windows
            (20 s hops, 2 s context either side) so memory stays flat; None never windows.
        progress: called as progress(windows done, windows in all) while a long clip is encoded.
        """
        return self.animate_batch([audio], sample_rate, [level], [person], postprocess, seed,
                                  emotion_reference=None if emotion_reference is None else [emotion_reference],
                                  schedule=None if schedule is None else [schedule],
                                  num_frames=None if num_frames is None else [num_frames],
                                  long_audio_s=long_audio_s, progress=progress)[0]

    def stream(self, level=1, person=0, settings: StreamSettings | None = None, *, sample_rate: int = SAMPLE_RATE,
               cuda_graphs: bool = False, **changes):
        """A streaming animator: push chunks at `sample_rate`, get final frames back (see
        streaming/stream.py).

        settings: a `StreamSettings` (default: its defaults); keyword `changes` replace its
        fields (`hop_ms=400, context_ms=1000`). hop_ms="auto": the smallest hop this machine keeps
        up with (measured now; streaming/budget.py). Latency is hop + lookahead + 5 ms of audio
        at 16 kHz (plus the resampling filter's delay at other rates; `stream.latency_ms`), plus
        compute time. `cuda_graphs`: each hop a replayed CUDA graph (streaming/executor.py).
        """
        from .streaming.stream import AnimationStream

        settings = self.stream_settings(settings, streams=1, **changes)
        return AnimationStream(self.model, self.device, self.dtype, level, person, settings, sample_rate=sample_rate,
                               cuda_graphs=cuda_graphs, encoders=self.encoder_backend)

    def engine(self, max_streams: int = MAX_STREAMS, settings: StreamSettings | None = None, *, cuda_graphs: bool = False,
               **changes):
        """A StreamEngine over this model: up to `max_streams` streams advanced together, each
        giving the frames `stream()` gives with the same settings (streaming/engine.py).
        hop_ms="auto": the smallest hop at which this machine keeps up with `max_streams` streams.
        With `cuda_graphs`, every batch bucket's static hop is built (on CUDA: captured) now, so
        that no live stream waits on it later."""
        from .streaming.engine import StreamEngine

        settings = self.stream_settings(settings, streams=max_streams, **changes)
        engine = StreamEngine(self.model, self.device, self.dtype, settings, max_streams=max_streams,
                              cuda_graphs=cuda_graphs, encoders=self.encoder_backend)
        if cuda_graphs:
            engine.prepare_static_hops()
        return engine

    def with_encoders(self, encoders: str | EncoderBackend) -> "Animator":
        """This model with other encoders beside it (a backend that leaves the model as it is)."""
        return Animator(self.model, self.device, self.dtype, self.backend, encoders)

    def stream_settings(self, settings: StreamSettings | None = None, streams: int = 1, report=None,
                        **changes) -> StreamSettings:
        """`settings` (default: the defaults) with `changes`, its hop resolved: "auto" becomes the
        smallest hop that holds `streams` live streams here (measured now; report(budget) after
        each hop tried)."""
        from .streaming.budget import resolve_hop

        if settings is None:  # the library's defaults, in an encoding these encoders run
            settings = StreamSettings()
            settings = replace(settings, encoding=self.encoder_backend.default_encoding(settings.encoding))
        if not isinstance(settings, StreamSettings):
            raise InvalidType(f"settings must be a StreamSettings, got {type(settings).__name__}")
        unknown = set(changes) - set(StreamSettings.__dataclass_fields__)
        if unknown:
            raise InvalidType(f"unknown stream setting(s) {', '.join(sorted(unknown))}: StreamSettings has "
                              f"{', '.join(StreamSettings.__dataclass_fields__)}")
        return resolve_hop(self.model, self.device, self.dtype, replace(settings, **changes), streams, report,
                           self.encoder_backend)

    def animate_batch(self, audios, sample_rate: int | None = None, level=1, person=0,
                      postprocess: bool = False, seed: int | None = None, *, emotion_reference=None,
                      schedule=None, num_frames=None, long_audio_s: float | None = LONG_AUDIO_S,
                      progress: Callable[[int, int], None] | None = None) -> list[Animation]:
        """Animate clips of different lengths in one padded batch; each result equals its
        single-clip `animate` (within float rounding). Every option takes one value for all
        clips or a list with one per clip (so give weight vectors as tuples or arrays). Clips longer than `long_audio_s` are windowed one by
        one (see `animate`); an emotion reference or a frame count keeps a clip offline."""
        if isinstance(audios, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise InvalidType("animate_batch takes a list of clips; use animate() for one clip")
        self.encoder_backend.verify(self.device, self.dtype, offline=True)
        audios = list(audios)
        if not audios:
            raise InvalidInput("animate_batch needs at least one clip")
        n = len(audios)
        clips = [self._prepare(a, sr, lv, p, ref, sch, nf) for a, sr, lv, p, ref, sch, nf in zip(
            audios, self._per_clip("sample_rate", sample_rate, n),
            self._per_clip("level", level, n), self._per_clip("person", person, n),
            self._per_clip("emotion_reference", emotion_reference, n), self._per_clip("schedule", schedule, n),
            self._per_clip("num_frames", num_frames, n))]

        limit = None if long_audio_s is None else long_audio_s * SAMPLE_RATE
        windowed = [i for i, c in enumerate(clips) if limit is not None and len(c.samples) > limit
                    and c.emotion_samples is None]
        offline = [i for i in range(n) if i not in windowed]
        outputs = {}
        if offline:
            outputs.update(zip(offline, self._run_batch([clips[i] for i in offline])))
        for i in windowed:
            outputs[i] = self._run_windowed(clips[i], progress)
        results = []
        for i in range(n):
            curves, logits, window_logits = outputs[i]
            if postprocess:
                curves = postprocess_curves(curves, None if seed is None else seed + i)
            results.append(Animation(np.ascontiguousarray(curves), logits, self.config.emotion_labels,
                                     emotion_window_logits=window_logits))
        return results

    def _prepare(self, audio, sample_rate, level, person, emotion_reference, schedule, frames) -> _Clip:
        samples = prepare_audio(audio, sample_rate, self.min_samples)
        if frames is None:
            frames = model_num_frames(len(samples))
        elif isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
            raise InvalidInput(f"num_frames must be a positive integer, got {frames!r}")
        if schedule is not None:
            if not isinstance(schedule, Schedule):
                schedule = Schedule(tuple(schedule))
            lw, pw = schedule.weights(self.config, int(frames))
        else:
            lw, pw = check_style(self.config, level, person)
        ref = None if emotion_reference is None else prepare_audio(emotion_reference, sample_rate, self.min_samples)
        return _Clip(samples, lw, pw, int(frames), ref)

    def _tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(x).to(self.device, self.dtype)

    def _pad(self, arrays: list[np.ndarray], dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad to one batch; in the model's dtype unless given (audio stays float32: the
        model normalises it in float32)."""
        lengths = torch.tensor([len(a) for a in arrays])
        out = torch.zeros(len(arrays), int(lengths.max()), *arrays[0].shape[1:])
        for i, a in enumerate(arrays):
            out[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        return out.to(self.device, dtype or self.dtype), lengths.to(self.device)

    def _style_batch(self, clips: list[_Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, n] weights, or [B, T, n] when any clip has a schedule (shorter ones padded)."""
        if all(c.level.ndim == 1 for c in clips):
            return (self._tensor(np.stack([c.level for c in clips])),
                    self._tensor(np.stack([c.person for c in clips])))
        per_frame = [(np.broadcast_to(c.level, (c.frames, c.level.shape[-1])),
                      np.broadcast_to(c.person, (c.frames, c.person.shape[-1]))) for c in clips]
        return self._pad([lw for lw, _ in per_frame])[0], self._pad([pw for _, pw in per_frame])[0]

    def _emotion_windows(self, emotion_hidden: torch.Tensor) -> np.ndarray:
        """Emotion hidden [T, hidden] -> classifier logits per EMOTION_WINDOW_S [W, labels]."""
        size = int(round(EMOTION_WINDOW_S * FPS))
        means = torch.stack([w.mean(0) for w in emotion_hidden.split(size)])
        return self.model.emotion_encoder.classify(means).float().cpu().numpy()

    def _run_batch(self, clips: list[_Clip]):
        """Offline model on a zero-padded batch -> [(blendshapes, logits, window logits)] per clip."""
        wave, lengths = self._pad([c.samples for c in clips], torch.float32)
        level, person = self._style_batch(clips)
        emotion_wave = emotion_lengths = None
        if any(c.emotion_samples is not None for c in clips):
            emotion_wave, emotion_lengths = self._pad(
                [c.samples if c.emotion_samples is None else c.emotion_samples for c in clips], torch.float32)
        with torch.inference_mode():
            out = self.model(wave, lengths, level, person, frames=[c.frames for c in clips],
                             emotion_wave=emotion_wave, emotion_num_samples=emotion_lengths)
            windows = [self._emotion_windows(out.emotion_hidden[i, :t]) for i, t in enumerate(out.frames)]
        blendshapes = out.blendshapes.float().cpu().numpy()
        logits = out.emotion_logits.float().cpu().numpy()
        return [(blendshapes[i, :t], logits[i], windows[i]) for i, t in enumerate(out.frames)]

    def _run_windowed(self, clip: _Clip, progress):
        """A long clip: windowed encoders, then the exact decoder over the whole sequence."""
        from .streaming.encoders import encode_windowed

        with torch.inference_mode():
            content, emotion = encode_windowed(self.model, torch.from_numpy(clip.samples).to(self.device),
                                               LONG_WINDOW, progress)
            if content.shape[1] != clip.frames:  # an explicit frame count: resample as offline
                content, emotion = resample_frames(content, clip.frames), resample_frames(emotion, clip.frames)
            blendshapes, _ = self.model.decode(content, emotion, self._tensor(clip.level)[None],
                                               self._tensor(clip.person)[None])
            logits = self.model.emotion_encoder.classify(emotion.mean(1))
            windows = self._emotion_windows(emotion[0])
        return blendshapes[0].float().cpu().numpy(), logits[0].float().cpu().numpy(), windows

    @staticmethod
    def _per_clip(name: str, value, n: int) -> list:
        """One value for every clip, or a list with one per clip."""
        if isinstance(value, list):
            if len(value) != n:
                raise InvalidInput(f"{name} has {len(value)} entries for {n} clips")
            return list(value)
        return [value] * n


def min_samples(config: EmoTalkConfig) -> int:
    """Shortest 16 kHz input both encoders of a model accept (the emotion branch needs >= 1 frame)."""
    n = max(config.content.receptive_field, config.emotion.receptive_field)
    while min(num_emotion_frames(config.emotion.num_cnn_frames(n)), config.content.num_cnn_frames(n)) < 1:
        n += 1
    return n
