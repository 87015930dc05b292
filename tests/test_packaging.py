"""Wheel and editable installs: the Triton kernels and the training code import only as
emotalk_fast.kernels and emotalk_fast.training, and nothing at the repo root shadows an installed
distribution (a top-level `kernels` shadowed Hugging Face's package, which transformers imports)."""
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
    # where a top-level `kernels` / `training` comes from, if any (Hugging Face installs a `kernels`)
    "top_kernels": getattr(importlib.util.find_spec("kernels"), "origin", None),
    "top_training": getattr(importlib.util.find_spec("training"), "origin", None),
    "transformers_loaded": "transformers" in sys.modules,
}))
"""


def _probe(cwd, env=None):
    import json

    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ours(origin: str | None, where: Path) -> bool:
    """Whether a top-level module comes from right under `where` (the repo root, or the folder the
    wheel was installed to): `where/name.py` or `where/name/__init__.py`."""
    if origin is None:
        return False
    path, where = Path(origin).resolve(), where.resolve()
    return path.parent == where or (path.name == "__init__.py" and path.parent.parent == where)


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
    assert not _ours(info["top_kernels"], target) and not _ours(info["top_training"], target)
    assert not info["transformers_loaded"]  # the inference path does not need it at import


def test_the_repo_root_shadows_no_installed_distribution():
    """Python puts the working folder first on sys.path (`python -m pytest`, `python -c`), so a
    package or module at the repo root hides an installed one of the same import name."""
    from importlib.metadata import packages_distributions

    installed = set(packages_distributions()) - {"emotalk_fast"}
    importable = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert not importable & installed, sorted(importable & installed)


def test_the_layout_shows_its_layers():
    """At most 10 modules at the package root (the rest in layer folders), no class over 300 lines."""
    import ast

    package = ROOT / "emotalk_fast"
    root_modules = [p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(root_modules) <= 10, root_modules
    long = [f"{p.relative_to(ROOT)}: {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in package.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 > 300]
    assert not long, long


def test_transformers_imports_from_the_repo_root():
    """transformers probes Hugging Face's `kernels` package when it is installed; from the repo
    root that must be the installed one."""
    pytest.importorskip("transformers")
    code = "from transformers import Wav2Vec2Model\nimport emotalk_fast.training.reference\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_installed_package_imports_from_anywhere(tmp_path):
    """The installed (editable in development) package resolves its kernels and training code."""
    info = _probe(tmp_path)
    assert info["kernels"].endswith(os.path.join("kernels", "__init__.py"))
    assert info["training"].endswith(os.path.join("training", "__init__.py"))
    assert not _ours(info["top_kernels"], ROOT) and not _ours(info["top_training"], ROOT)
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
    assert 'pip install -e ".[triton]"' in str(e) or "Triton" in str(e), e
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
    assert 'pip install transformers (pip install -e ".[training]" in the emotalk_fast clone)' in r.stderr


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
