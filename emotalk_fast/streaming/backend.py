"""What a stream needs of an encoder backend, and PyTorch's own encoders as the default: its
capabilities, one `verify` that refuses in one line what it cannot run, a `prepare` that makes
a model's encoders its own once, and the factory of a stream's incremental encoder.

backends/ implements it, one module per backend, and its registry resolves a name once; the
Animator hands the result to the stream, the engine and the budget. streaming/ imports no
backend: code here branches on capabilities, never on a backend's name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInput
from .settings import ENCODINGS


@dataclass(frozen=True)
class Capabilities:
    """What a backend runs."""

    devices: tuple[str, ...] = ("cpu", "cuda")  # torch device types
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any the model runs in
    encodings: tuple[str, ...] = ENCODINGS  # the stream encodings (StreamSettings.encoding) it runs
    offline: bool = True  # runs a whole clip (animate), not only a stream's hops
    static_shapes: bool = True  # its hops run with static shapes (cuda_graphs)
    exact: bool = True  # float arithmetic of the model's dtype (int8 changes the output)
    tolerated: bool = False  # not exact, within a tolerance measured and documented: "auto" may choose it
    exports: bool = False  # keeps what it makes of the model (an export, int8 weights) in a cache on disk
    shares_model: bool = True  # leaves the model's own encoders as they are (another backend can run beside it)
    packages: tuple[str, ...] = ()  # what it imports beyond the library's requirements


def _words(names) -> str:
    return " or ".join(str(n).replace("torch.", "") for n in names)


class EncoderBackend:
    """The interface, implemented by PyTorch's encoders (the model's own, as they are)."""

    name = "torch"  # what the registry (and --encoders) calls it
    title = "PyTorch"  # how messages name it
    capabilities = Capabilities()
    cache_dir = None  # where a backend that exports keeps its exports (None: the default cache)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def verify(self, device=None, dtype=None, *, encoding: str | None = None, offline: bool = False,
               cuda_graphs: bool = False, flags: bool = False) -> None:
        """Refuse, in one line, what this backend cannot run: a device or dtype (each checked
        where given), a stream's encoding, a whole clip (`offline`), static shapes (`cuda_graphs`).
        `flags`: say it in the CLI's words."""
        caps = self.capabilities
        who = f"--encoders {self.name} runs" if flags else f"the {self.title} encoders run"
        device = None if device is None else torch.device(device)
        if (device is not None and device.type not in caps.devices) or \
                (dtype is not None and caps.dtypes is not None and dtype not in caps.dtypes):
            where = _words(d.upper() if d == "cpu" else d for d in caps.devices)
            fix = "drop --dtype and --device" if flags else f"got {device} in {_words([dtype])}"
            raise InvalidInput(f"{who} on the {where} in {_words(caps.dtypes or ['any dtype'])}: {fix}")
        if offline and not caps.offline:
            fix = "use stream or serve" if flags else "use Animator.stream or Animator.engine"
            raise InvalidInput(f"{who} a live stream's hops only: {fix}")
        if encoding is not None and encoding not in caps.encodings:
            fix = f"drop --encoding {encoding}" if flags else f"not encoding {encoding}"
            raise InvalidInput(f"{who} {_words(caps.encodings)} encoding: {fix}")
        if cuda_graphs and not caps.static_shapes:
            raise InvalidInput(f"{who} eagerly, without static shapes: " +
                               ("drop --cuda-graphs" if flags else "not cuda_graphs"))

    def missing(self) -> list[str]:
        """The packages it needs that are not installed."""
        import importlib.util

        return [p for p in self.capabilities.packages if importlib.util.find_spec(p) is None]

    def resolve_device(self, device) -> torch.device:
        """`device` resolved for these encoders: "auto" is the CPU where they cannot run on a GPU."""
        from ..runtime.device import resolve_device

        return resolve_device("cpu" if device == "auto" and "cuda" not in self.capabilities.devices else device)

    def default_encoding(self, encoding: str) -> str:
        """The encoding a stream gets when none is asked for (`encoding`: the library's default)."""
        return encoding if encoding in self.capabilities.encodings else self.capabilities.encodings[0]

    def prepare(self, model):
        """Make `model`'s encoders this backend's, once -> the model it runs (PyTorch's: `model`
        itself, its linear weights laid out for few-row products on a CPU: runtime/layout.py)."""
        from ..runtime.layout import column_major_linears

        column_major_linears(model)
        return model

    def incremental_encoder(self, model, grid, slots: int, device, dtype):
        """A stream's incremental encoder over the rings of `slots` streams (streaming/incremental.py)."""
        from .incremental import IncrementalEncoder

        return IncrementalEncoder(model, grid, slots, device, dtype)

    def threads_note(self) -> str:
        """The threads this backend computes on beside torch's, in words ("" for torch's own)."""
        return ""


DEFAULT = EncoderBackend()  # a stream made without a backend runs the model's encoders as they are
