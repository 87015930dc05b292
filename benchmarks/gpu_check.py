"""Every CUDA test and GPU benchmark in one command, for the first run on a machine with a GPU:
one markdown and one JSON report to paste into the README.

    python benchmarks/gpu_check.py --out gpu_report            # on a CUDA machine: at most ~8 min
    python benchmarks/gpu_check.py --dry-run --out gpu_dry     # anywhere (CI): the plumbing only

Steps, each a subprocess killed at its time budget (the budgets add up to 9 minutes; they are
estimates until a first run on an H100/H200 sets them):
  cuda-tests  the test suite's GPU paths: kernels, decoder backends, engine and CUDA graphs,
              streaming, low precision (pytest; failures are listed)
  kernels     Triton kernels against PyTorch (pytest-benchmark; CUDA only)
  engine      the engine eager against CUDA graphs at 1..256 streams, release size, bfloat16
  floor       a 100 ms hop of 1..256 streams against its memory floor (the encoders' weights over
              the GPU's read bandwidth): up to how many streams a batch is bound by the weights
  serve       `serve` under load at 64, 128 and 256 concurrent clients, release size, bfloat16
  clip        a 10 s clip end to end (`emotalk-fast bench`)

--dry-run runs on the CPU: pytest only collects its cases, the scripts run at the mini size
with one or two streams, so that every command line, argument and report path is checked.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = [PY, "-m", "emotalk_fast"]
CUDA_TESTS = ["tests/kernels", "tests/model/test_decoder_backends.py", "tests/streaming/test_engine.py",
              "tests/streaming/test_stream.py", "tests/runtime/test_low_precision.py"]


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    budget_s: int
    command: list[str]  # on the GPU
    dry: list[str]  # on the CPU: collect or run small


def steps(out: Path) -> list[Step]:
    return [
        Step("cuda-tests", "CUDA tests", 150,
             [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CUDA_TESTS],
             [PY, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *CUDA_TESTS]),
        Step("kernels", "Triton kernels against PyTorch", 60,
             [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_bench_kernels.py",
              "--benchmark-json", str(out / "kernels.json")],
             [PY, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "benchmarks/test_bench_kernels.py"]),
        Step("engine", "Engine: eager against CUDA graphs", 130,
             [PY, "benchmarks/engine_load.py", "--preset", "emotalk", "--dtype", "bfloat16", "--device", "cuda",
              "--batches", "1,8,64,256", "--hops", "100,300", "--seconds", "3", "--most", "256", "--cuda-graphs", "both",
              "--encodings", "windowed,incremental"],
             [PY, "benchmarks/engine_load.py", "--preset", "mini", "--dtype", "float32", "--device", "cpu",
              "--batches", "1,2", "--hops", "100", "--seconds", "1", "--most", "2", "--cuda-graphs", "both",
              "--encodings", "windowed,incremental"]),
        Step("floor", "A hop against its memory floor", 60,
             [PY, "benchmarks/hop_floor.py", "--preset", "emotalk", "--device", "cuda", "--dtype", "bfloat16",
              "--backends", "torch", "--streams", "1,8,32,64,128,256", "--rounds", "2"],
             [PY, "benchmarks/hop_floor.py", "--preset", "mini", "--device", "cpu", "--backends", "torch",
              "--streams", "1,2", "--rounds", "1", "--threads", "1"]),
        Step("serve", "serve under load", 110,
             [PY, "benchmarks/serve_load.py", "--preset", "emotalk", "--dtype", "bfloat16", "--device", "cuda",
              "--clients", "64,128,256", "--seconds", "10", "--hop-ms", "100", "--json", str(out / "serve.json")],
             [PY, "benchmarks/serve_load.py", "--preset", "mini", "--device", "cpu", "--clients", "1,2",
              "--seconds", "1", "--hop-ms", "100", "--json", str(out / "serve.json")]),
        Step("clip", "A 10 s clip end to end", 30,
             [*CLI, "bench", "--device", "cuda", "--dtype", "bfloat16", "--seconds", "10", "--json"],
             [*CLI, "bench", "--device", "cpu", "--preset", "mini", "--seconds", "1", "--repeats", "1",
              "--skip-startup", "--json"]),
    ]


def run_step(step: Step, dry: bool, log) -> dict:
    command = step.dry if dry else step.command
    log(f"[gpu_check] {step.name}: {' '.join(command)} (budget {step.budget_s} s)")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=step.budget_s)
        status = "ok" if r.returncode == 0 else f"failed (exit {r.returncode})"
        stdout, stderr = r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {step.budget_s} s"
        stdout = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    log(f"[gpu_check] {step.name}: {status} in {seconds:.0f} s")
    return {"name": step.name, "title": step.title, "command": command, "status": status,
            "seconds": round(seconds, 1), "stdout": stdout[-20000:], "stderr": stderr[-5000:]}


def machine() -> dict:
    import torch

    from emotalk_fast.tools.measure import versions

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"), **versions()}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check{' (dry run on the CPU)' if report['dry_run'] else ''}", "",
             f"{m['date']}: {m['gpu'] or 'no GPU'}; torch {m['torch']}, triton {m['triton']}, python {m['python']}", ""]
    for r in report["steps"]:
        lines += [f"## {r['title']}: {r['status']} ({r['seconds']:.0f} s)", "", f"`{' '.join(r['command'][1:])}`", ""]
        body = r["stdout"].strip() or r["stderr"].strip()
        if body:
            lines += ["```", body[-6000:], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the benchmarks' JSON")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: collect the cases, run the scripts small")
    p.add_argument("--only", help="comma-separated step names (default: all)")
    args = p.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --dry-run to check the plumbing on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = steps(out)
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)}: choose from {[s.name for s in chosen]}")
        chosen = [s for s in chosen if s.name in names]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = {"dry_run": args.dry_run, "machine": machine(), "steps": [run_step(s, args.dry_run, log) for s in chosen]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    failed = [r["name"] for r in report["steps"] if r["status"] != "ok"]
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}; "
          f"{len(report['steps']) - len(failed)} of {len(report['steps'])} steps ok"
          + (f", not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
