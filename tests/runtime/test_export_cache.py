"""The export cache: an entry is built once and read after; a corrupt, changed or refused entry
is rebuilt, never trusted; processes starting at once build it once."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from emotalk_fast.backends.export_cache import MANIFEST, ExportCache, weights_digest

KEY = {"weights": "abc", "rings": [60, 60]}


class Builds:
    """A build that writes two files and counts its calls; a load that reads them back."""

    def __init__(self):
        self.calls = 0

    def build(self, folder):
        self.calls += 1
        (folder / "graph.onnx").write_bytes(b"graph" * 100)
        (folder / "graph.onnx.data").write_bytes(bytes(range(256)) * 10)

    @staticmethod
    def load(folder):
        data = (folder / "graph.onnx").read_bytes()
        if not data.startswith(b"graph"):
            raise ValueError("not a graph")
        return data


def test_built_once_then_read(tmp_path):
    cache, b = ExportCache(tmp_path), Builds()
    first, cached = cache.get("graphs", KEY, b.build, b.load)
    assert not cached and b.calls == 1
    again, cached = cache.get("graphs", KEY, b.build, b.load)
    assert cached and b.calls == 1 and again == first
    _, cached = cache.get("graphs", dict(KEY, weights="other"), b.build, b.load)  # other weights: another entry
    assert not cached and b.calls == 2
    assert not list(tmp_path.glob("graphs/.building-*"))  # nothing half-built left behind


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete a file", "rewrite the manifest",
                                    "unreadable manifest", "refused by its reader"])
def test_a_damaged_entry_is_rebuilt(tmp_path, capsys, damage):
    cache, b = ExportCache(tmp_path), Builds()
    cache.get("graphs", KEY, b.build, b.load)
    (folder,) = [p for p in (tmp_path / "graphs").iterdir() if p.is_dir()]
    data = folder / "graph.onnx.data"
    if damage == "flip a byte":  # same size: only the hash sees it
        raw = bytearray(data.read_bytes())
        raw[100] ^= 1
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:10])
    elif damage == "delete a file":
        data.unlink()
    elif damage == "rewrite the manifest":
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["key"]["weights"] = "someone else's"
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "unreadable manifest":
        (folder / MANIFEST).write_text("{not json")
    refused = []

    def load(folder):  # the reader refuses the entry on disk once (a runtime that cannot read it)
        if not refused and damage == "refused by its reader":
            refused.append(folder)
            raise RuntimeError("cannot read")
        return b.load(folder)

    loaded, cached = cache.get("graphs", KEY, b.build, load)
    assert not cached and b.calls == 2 and loaded == b"graph" * 100
    assert "rebuilding the cached export" in capsys.readouterr().err
    assert cache.get("graphs", KEY, b.build, b.load)[1]  # and read from then on


def test_processes_starting_at_once_build_it_once(tmp_path):
    """Three processes ask for one entry at once; the build takes a second: one builds, two read."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from emotalk_fast.backends.export_cache import ExportCache

        def build(folder):
            with open({str(tmp_path / "builds.log")!r}, "a") as log:
                log.write("built\\n")
            time.sleep(1.0)
            (folder / "graph.onnx").write_text("graph")

        value, cached = ExportCache({str(tmp_path / "cache")!r}).get(
            "graphs", {{"weights": "w"}}, build, lambda f: (f / "graph.onnx").read_text())
        print(value, cached)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert (tmp_path / "builds.log").read_text().count("built") == 1
    assert sorted(o[1] for o in outs) == ["False", "True", "True"] and {o[0] for o in outs} == {"graph"}


def test_weights_digest_sees_every_byte_and_name():
    a = torch.nn.Linear(4, 3)
    before = weights_digest(a)
    assert weights_digest(a) == before
    with torch.no_grad():
        a.weight[1, 2] += 1e-7 if a.weight[1, 2] != 0 else 1.0
    assert weights_digest(a) != before
    b = torch.nn.Sequential(torch.nn.Linear(4, 3))
    b[0].load_state_dict(a.state_dict())
    assert weights_digest(b) != weights_digest(a)  # same bytes, other names


def test_weights_digest_is_remembered_until_a_tensor_changes():
    a = torch.nn.Linear(300, 200)
    first = weights_digest(a)
    fresh = torch.nn.Linear(300, 200)
    fresh.load_state_dict(a.state_dict())
    assert weights_digest(fresh) == first  # the bytes, not the object
    a.weight = torch.nn.Parameter(a.weight.detach().clone())  # replaced: the same bytes
    assert weights_digest(a) == first
    a.bias = torch.nn.Parameter(torch.zeros(200))  # replaced: other bytes
    assert weights_digest(a) != first
