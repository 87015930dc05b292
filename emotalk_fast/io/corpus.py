"""Many inputs for one command: files, folders (recursively), stdin; where each output goes;
deterministic shards; which outputs already exist (all before a model is loaded, so a bad path
or option costs nothing); then the inputs animated in batches of similar length, a failing
batch retried clip by clip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidInput

# What a folder is searched for (extensions libsndfile reads; case-insensitive).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")
STDIO = "-"


@dataclass(frozen=True)
class Job:
    """One input and the output it goes to (STDIO for stdin / stdout)."""

    source: str  # a file path, or "-"
    output: str  # a file path, or "-"


def find_audio(inputs: list[str]) -> list[tuple[str, Path | None]]:
    """Inputs -> [(audio file or "-", the folder it was found under or None)], sorted within each
    folder; a missing path or a folder without audio is an error."""
    found = []
    for item in inputs:
        if item == STDIO:
            found.append((STDIO, None))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {path}")
            found += [(str(p), path) for p in files]
        elif path.is_file():
            found.append((str(path), None))
        else:
            raise FileNotFoundError(f"audio file not found: {path}")
    if sum(source == STDIO for source, _ in found) > 1:
        raise InvalidInput("stdin (-) can be read once")
    return found


def plan_jobs(inputs: list[str], output: str, extension: str) -> list[Job]:
    """Where each input's animation goes.

    One file (or -) to a file path (or -): that path. Otherwise `output` is a directory: a file
    keeps its name with `extension`; a folder's files mirror their paths below the folder.
    """
    found = find_audio(inputs)
    single = len(inputs) == 1 and len(found) == 1 and found[0][1] is None
    if single and not _is_directory_target(output):
        return [Job(found[0][0], output)]
    if output == STDIO:
        raise InvalidInput("-o - (stdout) takes one input; give a directory for many")
    if any(source == STDIO for source, _ in found):
        raise InvalidInput("stdin (-) needs a file as -o (or - for stdout), not a directory")
    jobs, taken = [], {}
    for source, root in found:
        relative = Path(source).relative_to(root) if root is not None else Path(Path(source).name)
        target = str(Path(output) / relative.with_suffix(extension))
        if target in taken:
            raise InvalidInput(f"{source} and {taken[target]} would both write {target}; rename one")
        taken[target] = source
        jobs.append(Job(source, target))
    return jobs


def _is_directory_target(output: str) -> bool:
    return output != STDIO and (output.endswith(os.sep) or output.endswith("/") or Path(output).is_dir())


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four shards (K counts from 1)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InvalidInput(f"--shard takes K/N, e.g. 1/4, got {text!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise InvalidInput(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """Every n-th job from the (k-1)-th, by sorted source path: the same split on every machine."""
    ordered = sorted(jobs, key=lambda j: j.source)
    return ordered[k - 1 :: n]


def animate_corpus(animator, jobs: list[Job], options: dict, write: Callable, batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> list[tuple[str, str]]:
    """Animate every job with `animator.animate_batch(**options)` and `write(animation, output)`
    each result -> [(source, why it failed)]. Jobs go in batches of similar length (little
    padding); a batch that fails is redone clip by clip, so one bad file costs only itself."""
    import soundfile

    def seconds(job):
        try:
            return soundfile.info(job.source).duration
        except Exception:  # noqa: BLE001 - unreadable: it fails (alone) when animated
            return 0.0

    ordered = sorted(jobs, key=seconds)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    failures, done = [], 0
    for batch in batches:
        try:
            anims = animator.animate_batch([j.source for j in batch], **options)
            results = list(zip(batch, anims, [None] * len(batch)))
        except (ValueError, TypeError, OSError, RuntimeError):
            results = []
            for job in batch:
                try:
                    results.append((job, animator.animate(job.source, **options), None))
                except (ValueError, TypeError, OSError, RuntimeError) as e:
                    results.append((job, None, str(e)))
        for job, anim, error in results:
            if error is None:
                try:
                    write(anim, job.output)
                except OSError as e:
                    error = str(e)
            if error is not None:
                failures.append((job.source, error))
        done += len(batch)
        if progress is not None:
            progress(done, len(jobs))
    return failures
