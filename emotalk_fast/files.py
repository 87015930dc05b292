"""Small file helpers: atomic writes (a reader, or a crash, sees the old file or the new one, never
half of one) and optional PEM files (the TLS credentials the service and its client load)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_pem(path: str | os.PathLike | None) -> bytes | None:
    """The bytes of an optional PEM certificate or key."""
    return None if path is None else Path(path).read_bytes()
