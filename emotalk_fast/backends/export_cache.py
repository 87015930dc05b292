"""Exports kept on disk between runs, for backends that compile the model into another runtime's
file (ONNX Runtime's encoders: minutes at release size, once).

An entry is a folder named by the hash of its key: what the export is, the weights' own hash,
the settings that shape the graph, and the versions of the library and of every package that
writes or reads it. Its manifest, written last, lists each file with its size and hash; an
entry whose manifest, files or hashes disagree, or that its reader refuses, is rebuilt, never
trusted. Processes starting at once take a lock per entry: one builds, the others wait and read.
The folder is `$EMOTALK_FAST_CACHE_DIR`, else `$XDG_CACHE_HOME/emotalk_fast`, else
`~/.cache/emotalk_fast` (`--cache-dir` moves it).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from ..errors import InvalidInput
from ..files import default_cache_dir
from ..runtime.threads import cores

T = TypeVar("T")
MANIFEST = "manifest.json"
_CHUNK = 1 << 24
# module -> (its tensors' addresses and in-place write counts, their digest); gone with the module
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, dtypes, shapes and bytes), hashed on
    every core in chunks; remembered for the module until a tensor of it is replaced or written
    in place by torch (two backends of one model hash it once; a write through `.data`, which
    torch does not count, is not seen)."""
    state = module.state_dict()
    seen = tuple((name, t.data_ptr(), _version(t)) for name, t in state.items())
    remembered = _DIGESTS.get(module)
    if remembered is not None and remembered[0] == seen:
        return remembered[1]
    # each tensor's bytes in memory order: a column-major weight (runtime/layout.py) as its
    # transpose, without a copy, marked "T"
    h = hashlib.blake2b(digest_size=20)
    flat, heads = [], []
    for name, t in state.items():
        t = t.detach().cpu()
        transposed = t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()
        flat.append((t.t() if transposed else t.contiguous()).reshape(-1).view(torch.uint8).numpy())
        heads.append(f"{name} {t.dtype} {tuple(t.shape)}{' T' if transposed else ''};".encode())
    for head, digests in zip(heads, _hash_chunks(flat)):
        h.update(head)
        h.update(digests)
    _DIGESTS[module] = (seen, h.hexdigest())
    return h.hexdigest()


def _hash_chunks(buffers) -> list[bytes]:
    """Each buffer's chunks hashed on every core (hashlib releases the GIL on large buffers) ->
    per buffer, its chunks' digests in order."""
    chunks = [(b, buf[i : i + _CHUNK]) for b, buf in enumerate(buffers) for i in range(0, max(len(buf), 1), _CHUNK)]
    with ThreadPoolExecutor(cores()) as pool:
        digests = list(pool.map(lambda c: hashlib.blake2b(c[1], digest_size=20).digest(), chunks))
    out = [b""] * len(buffers)
    for (b, _), d in zip(chunks, digests):
        out[b] += d
    return out


def _version(t: torch.Tensor) -> int:
    """How often `t` was written in place (-1 where torch keeps no count: an inference tensor)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _file_digest(path: Path) -> str:
    """A hash of a file's chunks, hashed on every core."""
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    return hashlib.blake2b(_hash_chunks([data])[0], digest_size=20).hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (POSIX: flock; elsewhere none, and two builders may race: each
    writes its own folder and the last rename wins)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ExportCache:
    """Exports on disk under `root` (default_cache_dir() when None)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def get(self, kind: str, key: dict, build: Callable[[Path], None], load: Callable[[Path], T]) -> tuple[T, bool]:
        """The export `key` describes, loaded -> (what `load(folder)` returned, whether it came
        from the cache). `build(folder)` writes the export's files into an empty folder; `load`
        raises on a file it cannot read (that entry is rebuilt)."""
        key = dict(key, kind=kind)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        folder = self.root / kind / name
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInput(f"the export cache {self.root} cannot be written ({e.strerror}): "
                               "pass --cache-dir (or set EMOTALK_FAST_CACHE_DIR) to a writable folder") from None
        with _locked(folder.with_name(name + ".lock")):
            problem = _check(folder, key)
            if problem is None:
                try:
                    return load(folder), True
                except Exception as e:  # noqa: BLE001 - a file its reader refuses: rebuilt below
                    problem = f"its reader refused it ({type(e).__name__})"
            if folder.exists():
                print(f"emotalk-fast: rebuilding the cached export {folder}: {problem}", file=sys.stderr, flush=True)
                shutil.rmtree(folder, ignore_errors=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
            try:
                build(building)
                files = {p.name: [p.stat().st_size, _file_digest(p)] for p in sorted(building.iterdir())}
                (building / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))
                os.replace(building, folder)
            finally:
                shutil.rmtree(building, ignore_errors=True)
            return load(folder), False


def _check(folder: Path, key: dict) -> str | None:
    """What is wrong with an entry (None: nothing; "missing" for none)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "its manifest is unreadable"
    if not isinstance(manifest, dict) or manifest.get("key") != key or not isinstance(manifest.get("files"), dict):
        return "its manifest does not match"
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file() or not isinstance(entry, list) or len(entry) != 2:
            return f"{name} is missing"
        if path.stat().st_size != entry[0] or _file_digest(path) != entry[1]:
            return f"{name} changed"
    return None
