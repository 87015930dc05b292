"""Encoder backends by name: the one place a name (`encoders="int8"`, `--encoders int8`) becomes
a backend. A backend's module is imported only when it is asked for."""
from __future__ import annotations

from importlib import import_module

from ..errors import InvalidInput
from ..streaming.backend import EncoderBackend

DEFAULT = "torch"  # the encoders as the model has them
AUTO = "auto"  # a live command's choice by measurement (auto_candidates; streaming.budget.choose_backend)
# name -> the backend's class, or "module:Class" in this package (imported on first use)
_BACKENDS: dict[str, type[EncoderBackend] | str] = {
    "torch": "pytorch:TorchBackend",
    "int8": "int8:Int8Backend",
    "openvino": "openvino:OpenVINOBackend",
    "onnx": "onnxruntime:OnnxRuntimeBackend",
}


def register(backend: type[EncoderBackend]) -> None:
    """Make `backend` (a subclass of EncoderBackend) available by its `name`."""
    if not (isinstance(backend, type) and issubclass(backend, EncoderBackend)):
        raise TypeError(f"a backend is a subclass of EncoderBackend, got {backend!r}")
    _BACKENDS[backend.name] = backend


def names() -> tuple[str, ...]:
    """The registered backends' names, the built-in ones first."""
    return tuple(_BACKENDS)


def auto_candidates(device, dtype, encoding: str) -> list[EncoderBackend]:
    """The backends "auto" measures for a live stream: installed, able to run it here, with the
    float arithmetic of the model's dtype or within a documented tolerance of it (int8), beside
    the model's own encoders (none changes the model); the default first."""
    found = []
    for name in names():
        backend = resolve(name)
        caps = backend.capabilities
        if not ((caps.exact or caps.tolerated) and caps.shares_model) or backend.missing():
            continue
        try:
            backend.verify(device, dtype, encoding=encoding)
        except InvalidInput:
            continue
        found.append(backend)
    return found


def resolve(encoders: str | EncoderBackend) -> EncoderBackend:
    """A new backend of that name (a backend object is returned as it is)."""
    if isinstance(encoders, EncoderBackend):
        return encoders
    if encoders == AUTO:
        raise InvalidInput("encoders 'auto' is a choice live commands make by measurement at start-up (serve, "
                           "stream --realtime); in Python pass a name, or measure auto_candidates(...) with "
                           "streaming.budget.choose_backend and pass the backend it returns")
    entry = _BACKENDS.get(encoders) if isinstance(encoders, str) else None
    if entry is None:
        raise InvalidInput(f"encoders must be one of {', '.join(names())}, not {encoders!r}")
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(import_module(f".{module}", __package__), cls)
    return entry()
