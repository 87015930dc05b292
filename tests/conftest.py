"""Test-session setup only; shared helpers live in tests/helpers.py."""
import os

# Triton kernels must see TRITON_INTERPRET before they are defined, so this runs
# before any test module imports emotalk_fast.kernels.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
