"""ONNX export: the whole model for clips of one fixed length, for runtimes and game engines that
take ONNX (ONNX Runtime, Unity Sentis, Unreal NNE, OpenVINO).

The graph is `EmoTalk.forward` on one unpadded clip of exactly `num_samples` samples, every
size a constant: inputs `wave` float32 [1, N] (raw 16 kHz mono, normalised inside as offline),
`level` [1, 2] and `person` [1, 24] weights (one-hot rows are the release's inputs; mixes work as
in `animate`); outputs `blendshapes` [1, T, 52] (T = ceil(N / 16000 * 30)) and
`emotion_logits` [1, labels]. Another length needs another export: the release's frame grid
depends on the clip's length, so no graph of one length is exact for another. The names the
graph's outputs stand for (blendshapes, emotions) and its rates are in its metadata.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..model.config import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE
from ..errors import InvalidInput
from ..model.emotalk import EmoTalk, num_frames


class FixedLengthGraph(nn.Module):
    """EmoTalk on one clip of a fixed length: (wave, level, person) -> (blendshapes, logits)."""

    def __init__(self, model: EmoTalk):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, level: torch.Tensor, person: torch.Tensor):
        out = self.model(wave, [wave.shape[1]], level, person)  # a list: every size stays a constant
        return out.blendshapes, out.emotion_logits


# ONNX Runtime 1.17 (which some Unreal NNE releases bundle) reads IR versions up to 9; the
# graphs use nothing of IR 10 (its 4-bit types)
IR_VERSION = 9


def example_inputs(model: EmoTalk, num_samples: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's shapes: noise speech, level 1, person 0."""
    dec = model.cfg.decoder
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((1, num_samples)).astype(np.float32) * 0.1)
    level, person = torch.zeros(1, dec.num_levels), torch.zeros(1, dec.num_persons)
    level[0, min(1, dec.num_levels - 1)], person[0, 0] = 1.0, 1.0
    return wave, level, person


def export_onnx(model: EmoTalk, path, seconds: float) -> dict:
    """Write the fixed-length graph of `seconds` of audio to `path` (float32, CPU) -> its metadata."""
    if not seconds > 0:
        raise InvalidInput(f"seconds must be > 0, got {seconds!r}")
    num_samples = int(round(seconds * SAMPLE_RATE))
    if num_samples < model.cfg.content.receptive_field:
        raise InvalidInput(f"{seconds} s is too short to animate")
    if next(model.parameters()).dtype != torch.float32:
        raise InvalidInput("the ONNX export is float32: load the model with dtype float32")
    model = model.cpu().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sample_rate": str(SAMPLE_RATE), "fps": str(FPS), "num_samples": str(num_samples),
            "num_frames": str(num_frames(num_samples)), "blendshapes": json.dumps(list(BLENDSHAPE_NAMES)),
            "emotion_labels": json.dumps(list(model.cfg.emotion_labels)),
            "num_levels": str(model.cfg.decoder.num_levels), "num_persons": str(model.cfg.decoder.num_persons)}
    graph, inputs = FixedLengthGraph(model).eval(), example_inputs(model, num_samples)
    program = quiet_export(graph, inputs, {}, ["wave", "level", "person"], ["blendshapes", "emotion_logits"])
    save_graph(program, path, meta)
    return meta


def save_graph(program, path: Path, meta: dict[str, str]) -> None:
    """Write an exported graph: `meta` as its metadata (string key/value pairs any runtime reads)
    and again beside it as JSON (`metadata_path`, each JSON-valued entry decoded) for hosts without
    a metadata API (Unity's Inference Engine); IR version IR_VERSION; the weights in a side file
    when over protobuf's 2 GB (the release size)."""
    program.model.metadata_props.update(meta)
    program.model.ir_version = min(program.model.ir_version, IR_VERSION)
    program.save(str(path))
    beside = {}
    for key, value in meta.items():
        try:
            beside[key] = json.loads(value)
        except ValueError:
            beside[key] = value
    metadata_path(path).write_text(json.dumps(beside, indent=1) + "\n")


def metadata_path(path) -> Path:
    """Where an export's metadata sits as JSON: beside the graph, `stream.onnx` -> `stream.onnx.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def quiet_export(graph: nn.Module, args: tuple, kwargs: dict, input_names, output_names, dynamic_shapes=None):
    """torch's ONNX exporter (dynamo) over `graph` on these example inputs -> its ONNXProgram,
    without the exporter's own notes (optional torchvision ops, its deprecations: not the user's)."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        exporter_log.setLevel(logging.ERROR)
        try:
            graph(*args, **kwargs)  # fills the decoder's per-device caches first: the trace then only reads them
            return torch.onnx.export(graph, args, kwargs=kwargs, dynamo=True, input_names=list(input_names),
                                     output_names=list(output_names), dynamic_shapes=dynamic_shapes, verbose=False)
        finally:
            exporter_log.setLevel(level)


def parity(model: EmoTalk, path, threads: int | None = None) -> tuple[float, float]:
    """Run the exported graph in ONNX Runtime on noise speech -> max abs difference from PyTorch
    of (blendshapes, emotion logits)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    num_samples = int(session.get_modelmeta().custom_metadata_map["num_samples"])
    inputs = example_inputs(model, num_samples)
    got = session.run(None, dict(zip(("wave", "level", "person"), (x.numpy() for x in inputs))))
    with torch.inference_mode():
        want = FixedLengthGraph(model.cpu().eval())(*inputs)
    return tuple(float(np.abs(g - w.float().numpy()).max()) for g, w in zip(got, want))
