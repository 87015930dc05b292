"""Docs are code: every shell line of README.md and docs/*.md runs verbatim, and every Python
block runs, in a scratch folder holding the files they name (a small random-weight checkpoint
named EmoTalk.pth, speech.wav). Each document gets its own folder, its lines run in order (a
later line may use what an earlier one wrote). `emotalk-fast serve` lines start a server on
loopback that the following lines talk to; network targets are loopback receivers. Lines that
are not this library's commands (installing, the test tools, benchmark scripts, Blender) are
listed with the reason they are not run, and a line nobody classified fails the test."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
import torch

from emotalk_fast.model.checkpoint import random_release_state_dict
from emotalk_fast.model.config import EmoTalkConfig
from helpers import espeak_speech

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console")
NOT_RUN = [  # (pattern, why the line is not run here)
    (r"^(python -m )?pip install", "installs packages"),
    (r"^python -m venv ", "makes the environment the tests already run in"),
    (r"(^|\s)(python -m )?pytest(\s|$)", "the test tools themselves"),
    (r"^mkdocs ", "tests/test_docs_site.py builds the site"),
    (r"python benchmarks/", "a benchmark script: minutes to hours, or the released code; benchmarks/ are "
                            "collected by the test suite and gpu_check's dry run runs them small"),
    (r"^python examples/onnx_stream\.py ", "the torch-free host loop reads a 16 kHz wav from the repository's "
                                           "examples/; tests/runtime/test_onnx_stream.py runs it"),
    (r"^ADDON=|^blender ", "needs Blender and a scene with a face; tests/bridges/test_blender.py runs the add-on"),
    (r"^cd emotalk_fast/serve/protos", "rewrites the committed descriptor set; tests/serve/test_protocol.py "
                                       "recompiles it and compares"),
]
UNTIL_KILLED = {"emotalk-fast bench": 40}  # long runs: pass when no error shows in this many seconds
TIMEOUT_S = 900  # the smoke recipe trains for a minute or two
ERROR_SIGNS = ("Traceback (most recent call last)", "usage: emotalk-fast", ": error:")


def blocks(path: Path, languages) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)
            if m.group(1) in languages]


def shell_lines(block: str) -> list[str]:
    """Commands of a shell block: comments and blank lines dropped, continuations joined."""
    out, pending = [], ""
    for raw in block.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def reason_not_run(line: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, line)), None)


ENV_PREFIX = r"^(\w+=\S*\s+)*"  # VAR=value assignments before a command, as in the AVX2 emulation


def runs_here(line: str) -> bool:
    return bool(re.search(r"(^|[|;&]\s*)(\w+=\S*\s+)*(emotalk-fast|python -m emotalk_fast|torchrun .*-m emotalk_fast)\b",
                          line))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """What the documents' commands read: a tiny random checkpoint in the release layout as
    EmoTalk.pth (its config inferred from the shapes) and 2.5 s of speech as speech.wav."""
    d = tmp_path_factory.mktemp("docs-base")
    torch.save(random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=1), d / "EmoTalk.pth")
    speech = espeak_speech("The documentation runs every command it shows.", speed=175, rate=22050)
    soundfile.write(str(d / "speech.wav"), speech, 22050, subtype="PCM_16")
    for name, words in (("a.wav", "A first clip."), ("b.wav", "And a second one, a little longer."),
                        ("line.wav", "A line of dialogue, spoken calmly for a few seconds, then it ends."),
                        ("angry_take.wav", "Get out of here, now!")):
        soundfile.write(str(d / name), espeak_speech(words, speed=160), 16000, subtype="PCM_16")
    return d


class LoopbackReceivers:
    """UDP sockets on the ports the documents send to (Live Link 11111, VMC 39539/39540), drained."""

    def __init__(self, ports=(11111, 39539, 39540)):
        self.sockets = []
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken: the sender's refusals are counted, which is also fine
                s.close()
                continue
            s.setblocking(False)
            self.sockets.append(s)

    def close(self):
        for s in self.sockets:
            s.close()


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_server(line: str, cwd: Path):
    from emotalk_fast.client import health_status

    command = line.rstrip().rstrip("&").strip()
    port = re.search(r"--port\s+(\d+)", command)
    address = f"127.0.0.1:{port.group(1) if port else 52000}"
    if health_status(address, timeout=1) is not None:
        pytest.skip(f"something already answers at {address}")
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 120
    while health_status(address, timeout=1) != "SERVING":
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"`{line}` did not come up: {err[-2000:]}")
        time.sleep(0.3)
    return proc


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _run(line: str, cwd: Path) -> str | None:
    """Run one line; the problem, or None."""
    command = re.sub(ENV_PREFIX, "", line)
    limit = next((s for prefix, s in UNTIL_KILLED.items() if command.startswith(prefix)), None)
    proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit or TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if limit is None:
            return f"still running after {TIMEOUT_S} s"
        return next((f"error output: {err[-1500:]}" for sign in ERROR_SIGNS if sign in err + out), None)
    if proc.returncode != 0 or any(sign in err for sign in ERROR_SIGNS):
        return f"exit {proc.returncode}: {(err or out)[-1500:]}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_shell_line_runs_verbatim(document, base, tmp_path):
    lines = [line for block in blocks(document, SHELLS) for line in shell_lines(block)]
    if not lines:
        pytest.skip("no shell lines")
    cwd = tmp_path / "scratch"
    shutil.copytree(base, cwd)
    receivers, servers, failures, ran = LoopbackReceivers(), [], [], 0
    try:
        for line in lines:
            if reason_not_run(line) is not None:
                continue
            if not runs_here(line):
                failures.append(f"{line}\n    neither run nor listed in NOT_RUN with a reason")
            elif re.match(r"^emotalk-fast serve\b", line):
                servers.append(_start_server(line, cwd))
                ran += 1
            else:
                problem = _run(line, cwd)
                if problem:
                    failures.append(f"{line}\n    {problem}")
                ran += 1
    finally:
        for proc in servers:
            _stop(proc)
        receivers.close()
    assert not failures, f"{document.name}: {len(failures)} of {len(lines)} lines failed:\n" + "\n".join(failures)
    assert ran or all(reason_not_run(line) for line in lines)


PYTHON_PRELUDE = """
from emotalk_fast import Animator
animator = Animator.from_pretrained("EmoTalk.pth")
anim = animator.animate("speech.wav")
"""


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_python_block_runs(document, base, tmp_path):
    """A document's Python blocks run in order in one interpreter, after the prelude the docs
    state (an animator on EmoTalk.pth, an animation of speech.wav); a block whose first line is
    `# not run: reason` is skipped for that reason."""
    code = [b for b in blocks(document, ("python",)) if not b.startswith("# not run:")]
    if not code:
        pytest.skip("no runnable Python blocks")
    cwd = tmp_path / "scratch"
    shutil.copytree(base, cwd)
    script = cwd / "blocks.py"
    script.write_text(PYTHON_PRELUDE + "\n".join(f"\n# --- block {i}\n{b}" for i, b in enumerate(code)))
    server = _start_server("emotalk-fast serve --checkpoint EmoTalk.pth", cwd) if "127.0.0.1:52000" in "".join(code) \
        else None
    receivers = LoopbackReceivers()
    try:
        r = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_env(), capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    finally:
        receivers.close()
        if server is not None:
            _stop(server)
    assert r.returncode == 0, f"{document.name}: {r.stderr[-3000:]}"
