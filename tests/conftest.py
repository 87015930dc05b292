"""Test-session setup only; shared helpers live in tests/helpers.py."""
import atexit
import os
import shutil
import tempfile

# exports cached by the tests go to a folder of the test run, never to the user's cache
if "EMOTALK_FAST_CACHE_DIR" not in os.environ:
    os.environ["EMOTALK_FAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="emotalk_fast_test_cache_")
    atexit.register(shutil.rmtree, os.environ["EMOTALK_FAST_CACHE_DIR"], True)

# Triton kernels must see TRITON_INTERPRET before they are defined, so this runs
# before any test module imports emotalk_fast.kernels.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
