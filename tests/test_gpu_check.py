"""benchmarks/gpu_check.py --dry-run on the CPU: every step's command line runs (pytest collects
the GPU cases, the scripts run at the mini size) and the reports are written."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_checks_the_plumbing(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses == dict.fromkeys(["cuda-tests", "kernels", "engine", "floor", "serve", "clip"], "ok"), \
        (statuses, r.stderr[-3000:], [s["stderr"][-1500:] for s in report["steps"] if s["status"] != "ok"])
    assert r.returncode == 0 and "6 of 6 steps ok" in r.stdout
    steps = {s["name"]: s for s in report["steps"]}
    assert "test_ring_decode[" in steps["kernels"]["stdout"]  # the GPU cases were collected
    assert "| streams in the batch |" in steps["engine"]["stdout"]
    assert "memory floor" in steps["floor"]["stdout"] and "1 threads, torch: " in steps["floor"]["stdout"]
    assert json.loads(steps["clip"]["stdout"])["preset"] == "mini"
    assert (tmp_path / "serve.json").is_file()
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# GPU check (dry run on the CPU)") and md.count("## ") == 6
