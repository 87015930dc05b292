"""The encoders compiled by OpenVINO for the CPU (opt-in, `encoders="openvino"`, `--encoders
openvino`; OpenVINOBackend): the same float32 arithmetic as PyTorch (tested within 1e-5), run by OpenVINO's CPU
runtime, which fuses the wav2vec2 layers and is faster on short windows, the stream's case
(docs/performance.md has the figures).

Each encoder becomes two graphs with dynamic shapes, traced once at start-up: its CNN front end
(wave [B, N] -> features [B, L, C]) and its transformer (features [B, T, C], valid frames [B] ->
hidden [B, T, hidden]). The resampling between them, the decoder and the emotion head stay in
PyTorch, so the stream, the engine and the offline path call the encoders as before. Compiled
whole, an encoder has no layer to run over kept keys and values: streams encode windowed.
"""
from __future__ import annotations

import threading
import warnings

import torch
import torch.nn as nn

from ..model.encoder import ConvFrontEnd, Wav2Vec2Encoder
from ..errors import InvalidInput, install_hint
from ..runtime.device import require_cpu_float32
from ..streaming.backend import Capabilities, EncoderBackend


def require_openvino():
    """The openvino module, or a one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise InvalidInput(f"the OpenVINO encoders need openvino: {install_hint('openvino')}") from None
    return openvino


class _Graph:
    """One traced module compiled for the CPU in float32; callable with torch tensors.

    One infer request, behind a lock: a request is not safe to share between threads, and the
    encoders run one call at a time anyway (they take every thread they are given)."""

    def __init__(self, module: nn.Module, example: tuple[torch.Tensor, ...], shapes: list, threads: int):
        ov = require_openvino()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are dynamic below
            warnings.filterwarnings("ignore", "`torch.jit.trace", DeprecationWarning)  # OpenVINO's converter traces
            model = ov.convert_model(module, example_input=example, input=[ov.PartialShape(s) for s in shapes])
        # f32 inference precision: OpenVINO would otherwise pick bfloat16 on a CPU that has it.
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self._request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with self._lock:
            out = self._request.infer([x.detach().contiguous().numpy() for x in inputs])  # a copy
        return torch.from_numpy(out[0])


class _FrontEndLayers(nn.Module):
    def __init__(self, front_end: ConvFrontEnd):
        super().__init__()
        self.front_end = front_end

    def forward(self, wave):
        return self.front_end._layers(wave)


class _Transformer(nn.Module):
    def __init__(self, encoder: Wav2Vec2Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, feats, lengths):
        return self.encoder.transformer(feats, lengths)


class OpenVINOFrontEnd(nn.Module):
    """ConvFrontEnd's interface (and its pieces over long audio) on a compiled graph."""

    forward = ConvFrontEnd.forward  # pieces of FRONT_END_PIECE_FRAMES, each through _layers

    def __init__(self, front_end: ConvFrontEnd, threads: int):
        super().__init__()
        self.cfg, self.hop = front_end.cfg, front_end.hop
        example = torch.zeros(1, front_end.cfg.receptive_field * 2)
        self._graph = _Graph(_FrontEndLayers(front_end), (example,), [[-1, -1]], threads)

    def _layers(self, wave: torch.Tensor) -> torch.Tensor:
        return self._graph(wave.float())


class OpenVINOEncoder(nn.Module):
    """Wav2Vec2Encoder's interface (front_end, transformer, classify) on compiled graphs. The
    PyTorch encoder's weights are not kept: OpenVINO holds its own copy of them."""

    classify = Wav2Vec2Encoder.classify

    def __init__(self, encoder: Wav2Vec2Encoder, threads: int, front_end: OpenVINOFrontEnd | None = None):
        super().__init__()
        cfg = self.cfg = encoder.cfg
        self.front_end = front_end or OpenVINOFrontEnd(encoder.front_end, threads)
        example = (torch.zeros(1, 8, cfg.conv_dim[-1]), torch.tensor([8]))
        self._transformer = _Graph(_Transformer(encoder), example, [[-1, -1, cfg.conv_dim[-1]], [-1]], threads)
        if cfg.num_labels:
            self.cls_dense, self.cls_out = encoder.cls_dense, encoder.cls_out

    def transformer(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """As Wav2Vec2Encoder.transformer. No lengths = every frame valid: the same arithmetic,
        since a mask of ones multiplies by 1 and hides no key."""
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1])
        return self._transformer(feats.float(), lengths.cpu().long()).to(feats.device)


def compile_encoders(model, threads: int | None = None) -> None:
    """Replace both encoders of `model` with OpenVINOEncoder, in place. CPU and float32 only.
    threads: OpenVINO's threads (default: torch's). A front end the two encoders share stays
    shared."""
    require_cpu_float32(model, "OpenVINO encoders")
    threads = threads or torch.get_num_threads()
    shared = model.shares_front_end
    model.content_encoder = OpenVINOEncoder(model.content_encoder, threads)
    model.emotion_encoder = OpenVINOEncoder(model.emotion_encoder, threads,
                                            model.content_encoder.front_end if shared else None)


class OpenVINOBackend(EncoderBackend):
    name, title = "openvino", "OpenVINO"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), encodings=("windowed",),
                                static_shapes=False, shares_model=False, packages=("openvino",))

    def prepare(self, model):
        self.threads = torch.get_num_threads()  # the one thread policy: torch's count, set by --threads
        compile_encoders(model, self.threads)
        return model

    def threads_note(self) -> str:
        return f"the encoders in OpenVINO on {self.threads}"
