"""CPU threads: how many cores this process may use, and whether the content and emotion
encoders of a window run at once, each on its own thread (torch's threads x 2 <= cores). The
same operations run either way, each on as many threads, so the results are identical."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, TypeVar

import torch

from ..errors import InvalidInput

CONCURRENT_BRANCHES = True  # False: the two branches one after the other (tests compare both ways)
T = TypeVar("T")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def branches_run_at_once(device: torch.device) -> bool:
    """Whether two encoder branches run concurrently here."""
    return CONCURRENT_BRANCHES and device.type == "cpu" and 2 * torch.get_num_threads() <= cores()


def set_threads(threads: int | None, name: str = "threads") -> None:
    """Torch's CPU threads (None: torch's choice); every encoder backend follows (encoder_threads). `name`:
    the option's name in the refusal (a keyword, or a flag)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInput(f"{name} must be >= 1, got {threads!r}")
    torch.set_num_threads(threads)


def encoder_threads() -> int:
    """Threads for a backend that runs both encoders in one call on a pool of its own (ONNX
    Runtime): the cores PyTorch's encoders take at torch's count, twice it where the two branches
    run at once (capped at the cores), so that --threads and serve's count mean the same there."""
    n = torch.get_num_threads()
    return min(cores(), 2 * n) if branches_run_at_once(torch.device("cpu")) else n


def serve_threads() -> int:
    """Torch threads for a server on a CPU: one fewer than torch's default (one per core), left to
    the gRPC, audio and client threads. With every core in torch, any of those stalls all of
    torch's threads at each parallel step (docs/performance.md)."""
    return max(1, torch.get_num_threads() - 1)


@lru_cache(maxsize=1)
def _second_branch_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="emotalk-emotion-branch")


if hasattr(os, "register_at_fork"):  # a forked child has no threads: it starts its own
    os.register_at_fork(after_in_child=_second_branch_thread.cache_clear)


def run_pair(first: Callable[[], T], second: Callable[[], T], device: torch.device) -> tuple[T, T]:
    """(first(), second()): at once where `branches_run_at_once`, the second on a thread that
    keeps the caller's inference and grad modes (both thread-local); else one after the other."""
    if not branches_run_at_once(torch.device(device)):
        return first(), second()
    modes = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_caller_modes() -> T:
        with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
            return second()

    later = _second_branch_thread().submit(in_caller_modes)
    return first(), later.result()
