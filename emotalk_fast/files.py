"""Small file helpers: atomic writes (a reader, or a crash, sees the old file or the new one, never
half of one), the check every single output gets (its folder exists), optional PEM files (the TLS credentials the service and its client load), and the
folder where the library keeps what it measured or exported between runs."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InvalidInput


def default_cache_dir() -> Path:
    """$EMOTALK_FAST_CACHE_DIR, else $XDG_CACHE_HOME/emotalk_fast, else ~/.cache/emotalk_fast."""
    if os.environ.get("EMOTALK_FAST_CACHE_DIR"):
        return Path(os.environ["EMOTALK_FAST_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emotalk_fast"


def require_folder(path: str | os.PathLike) -> Path:
    """Refuse, in one line, an output file whose folder does not exist (a typo costs nothing;
    the README's rule for one output file) -> the path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInput(f"cannot save {path}: directory {path.parent} does not exist")
    return path


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
