"""Wheel and editable installs: kernels/ and training/ import only as emotalk_fast.kernels and
emotalk_fast.training (a top-level `kernels` would shadow Hugging Face's package)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, json, sys
import emotalk_fast, emotalk_fast.kernels, emotalk_fast.training, emotalk_fast.training.reference
import emotalk_fast.cli
print(json.dumps({
    "package": emotalk_fast.__file__,
    "kernels": emotalk_fast.kernels.__file__,
    "training": emotalk_fast.training.__file__,
    "top_kernels": importlib.util.find_spec("kernels") is not None,
    "top_training": importlib.util.find_spec("training") is not None,
    "transformers_loaded": "transformers" in sys.modules,
}))
"""


def _probe(cwd, env=None):
    import json

    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed: {r.stderr[-2000:]}")
    (path,) = out.glob("emotalk_fast-*.whl")
    return path


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "emotalk_fast/kernels/__init__.py" in names
    assert "emotalk_fast/training/reference.py" in names
    assert "emotalk_fast/cli/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"kernels", "training", "tests", "benchmarks"}, tops
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "emotalk-fast = emotalk_fast.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_wheel_install_imports(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    info = _probe(tmp_path, env)
    assert info["package"].startswith(str(target))
    assert info["kernels"] == str(target / "emotalk_fast" / "kernels" / "__init__.py")
    assert not info["top_kernels"] and not info["top_training"]
    assert not info["transformers_loaded"]  # the inference path does not need it at import


def test_installed_package_imports_from_anywhere(tmp_path):
    """The installed (editable in development) package resolves kernels/ and training/."""
    info = _probe(tmp_path)
    assert info["kernels"].endswith(os.path.join("kernels", "__init__.py"))
    assert info["training"].endswith(os.path.join("training", "__init__.py"))
    assert not info["top_kernels"] and not info["top_training"]
    assert not info["transformers_loaded"]


LIGHT = r"""
import sys

class Absent:  # as if triton and transformers were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("triton", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Absent())
import numpy as np
import emotalk_fast
from emotalk_fast import Animator
from emotalk_fast.cli import main

animator = Animator.from_config("tiny", device="cpu")
speech = (0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
assert animator.animate(speech).num_frames == 30
stream = animator.stream()
assert len(stream.push(speech)) + len(stream.flush()) == 30
try:
    Animator.from_config("tiny", device="cpu", backend="triton")
except ValueError as e:
    assert "emotalk-fast[triton]" in str(e) or "Triton" in str(e), e
else:
    raise AssertionError("backend='triton' without triton")
assert main(["train", "data", "out", "--preset", "tiny"]) == 1  # says to install the extra
assert "triton" not in sys.modules and "transformers" not in sys.modules, [m for m in sys.modules if m.split(".")[0] in ("triton", "transformers")]
print("light ok")
"""


def test_inference_needs_neither_triton_nor_transformers():
    r = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRITON_INTERPRET": "0"})
    assert r.returncode == 0 and "light ok" in r.stdout, r.stdout + r.stderr
    assert "pip install 'emotalk-fast[training]'" in r.stderr


def test_client_and_cli_import_without_torch():
    """`emotalk-fast send` and `health` need no model: importing the client and the CLI leaves
    torch unloaded (the package's names load on first use), and those names still resolve."""
    code = ("import sys, emotalk_fast, emotalk_fast.client, emotalk_fast.cli\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from emotalk_fast import Animator, StreamEngine, EmoTalkConfig, BLENDSHAPE_NAMES\n"
            "assert 'torch' in sys.modules and Animator.__name__ == 'Animator' and len(BLENDSHAPE_NAMES) == 52\n"
            "assert set(emotalk_fast.__all__) <= set(dir(emotalk_fast))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr


def test_the_serve_extra_needs_no_code_generator():
    """grpcio-tools (protoc) is for the descriptor-set test only: [serve] does not pull it."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["serve"] if d.startswith("grpcio-tools")], extras["serve"]
    assert any(d.startswith("grpcio-tools") for d in extras["dev"])
