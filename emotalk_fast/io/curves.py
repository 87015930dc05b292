"""Writers for blendshape curves: .npy, .csv (frame, time, 52 names) and .json."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from ..files import atomic_write, require_folder

FORMATS = (".csv", ".npy", ".json")


def write_npy(path: Path, blendshapes: np.ndarray, **_) -> None:
    with open(path, "wb") as f:
        np.save(f, blendshapes.astype(np.float32))


def csv_text(blendshapes: np.ndarray, names, fps: float, **_) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "time", *names])
    for i, row in enumerate(blendshapes):
        w.writerow([i, f"{i / fps:.6f}", *(f"{v:.7g}" for v in row)])
    return buf.getvalue()


def json_text(blendshapes: np.ndarray, names, fps: float, emotion=None, metadata=None, **_) -> str:
    doc = {"fps": fps, "names": list(names), "num_frames": int(blendshapes.shape[0]),
           "frames": [[float(v) for v in row] for row in blendshapes]}
    if emotion is not None:
        doc["emotion"] = {k: float(v) for k, v in emotion.items()}
    if metadata:
        doc["metadata"] = dict(metadata)
    return json.dumps(doc)


def write_csv(path: Path, blendshapes: np.ndarray, names, fps: float, **_) -> None:
    Path(path).write_text(csv_text(blendshapes, names, fps))


def write_json(path: Path, blendshapes: np.ndarray, names, fps: float, **extra) -> None:
    Path(path).write_text(json_text(blendshapes, names, fps, **extra))


# what `-o -` can write to stdout
TEXT_FORMATS = {".csv": csv_text, ".json": json_text}


_WRITERS = {".npy": write_npy, ".csv": write_csv, ".json": write_json}


# Named formats that share an extension with a default one: format -> (extension, writer).
NAMED_FORMATS = ("livelinkface",)


def _named_writer(format: str, path: Path):
    if format not in NAMED_FORMATS:
        raise InvalidInput(f"unknown format {format!r}: use one of {', '.join(NAMED_FORMATS)} or None")
    if path.suffix.lower() != ".csv":
        raise InvalidInput(f"format {format!r} writes a .csv file, got {path.name}")
    from .livelink_format import write_livelink_csv

    return write_livelink_csv


def check_output(path: str | os.PathLike, format: str | None = None, make_parents: bool = False):
    """The writer for `path` (by extension, or a named `format`), or ValueError saying why it
    cannot be written: called before any work, so a typo costs nothing."""
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower()) if format is None else _named_writer(format, path)
    if writer is None:
        raise InvalidInput(f"cannot save {path.name}: unknown extension {path.suffix!r}; the output must end in "
                           f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    require_folder(path)
    return writer


def save_blendshapes(path: str | os.PathLike, blendshapes: np.ndarray, names, fps: float, emotion=None,
                     format: str | None = None, metadata: dict | None = None) -> Path:
    """Write by extension (or a named `format`); atomically, so a crash never leaves half a file behind."""
    path = Path(path)
    writer = check_output(path, format)
    return atomic_write(path, lambda tmp: writer(Path(tmp), blendshapes, names=names, fps=fps, emotion=emotion,
                                                 metadata=metadata))


def load_blendshapes(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...], float, dict | None]:
    """Read what save_blendshapes wrote (or a Live Link Face CSV) -> (curves [T, C], names, fps,
    emotion or None)."""
    from ..model.config import BLENDSHAPE_NAMES, FPS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"animation file not found: {path}")
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            curves = np.load(path, allow_pickle=False)
            if curves.ndim != 2 or curves.shape[1] != len(BLENDSHAPE_NAMES):
                raise InvalidInput(f"expected [frames, {len(BLENDSHAPE_NAMES)}], got shape {list(curves.shape)}")
            return curves.astype(np.float32), BLENDSHAPE_NAMES, float(FPS), None
        if ext == ".json":
            doc = json.loads(path.read_text())
            return (np.asarray(doc["frames"], np.float32).reshape(-1, len(doc["names"])), tuple(doc["names"]),
                    float(doc["fps"]), doc.get("emotion"))
        if ext == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if rows and rows[0][:1] == ["Timecode"]:
                from .livelink_format import read_livelink_csv

                take = read_livelink_csv(path)
                return take.blendshapes, BLENDSHAPE_NAMES, float(FPS), None
            if not rows or rows[0][:2] != ["frame", "time"]:
                raise InvalidInput("not an emotalk_fast CSV (its header starts frame,time)")
            values = np.asarray(rows[1:], np.float64)
            times = values[:, 1]
            fps = round(1.0 / float(times[1] - times[0]), 6) if len(times) > 1 else float(FPS)
            return values[:, 2:].astype(np.float32), tuple(rows[0][2:]), fps, None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"cannot read animation {path}: {e}") from None
    raise InvalidInput(f"cannot read {path.name}: expected .csv, .npy or .json")
