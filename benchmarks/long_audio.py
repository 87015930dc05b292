"""Peak memory and time of offline animation for long audio (issue: no length cap, memory
that does not grow with the square of the length).

    python benchmarks/long_audio.py --minutes 1 5 10            # release size, random weights
    python benchmarks/long_audio.py --preset mini --minutes 1 5

Each length runs in a fresh process that loads a saved checkpoint (memory-mapped) and
animates generated speech; peak RSS is that process's maximum resident set size.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def child(checkpoint: str, minutes: float, dtype: str | None) -> None:
    from emotalk_fast import Animator
    from emotalk_fast.tools.measure import generated_speech

    speech = generated_speech(60 * minutes)
    animator = Animator.from_pretrained(checkpoint, device="cpu", dtype=dtype)
    t0 = time.perf_counter()
    anim = animator.animate(speech, progress=lambda done, total: print(f"[long-audio] window {done}/{total}", file=sys.stderr))
    seconds = time.perf_counter() - t0
    print(json.dumps({"minutes": minutes, "frames": anim.num_frames, "seconds": seconds,
                      "real_time_factor": seconds / (60 * minutes),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="emotalk")
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    p.add_argument("--dtype", default=None)
    p.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "MINUTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]), args.dtype)
        return
    from emotalk_fast import Animator

    with tempfile.TemporaryDirectory() as tmp:
        Animator.from_config(args.preset, device="cpu").save_pretrained(tmp)
        rows = []
        for m in args.minutes:
            cmd = [sys.executable, __file__, "--child", tmp, str(m)] + (["--dtype", args.dtype] if args.dtype else [])
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['minutes']:g} min: {r['frames']} frames in {r['seconds']:.1f} s "
                  f"(RTF {r['real_time_factor']:.2f}), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(json.dumps({"preset": args.preset, "dtype": args.dtype or "float32", "rows": rows}))


if __name__ == "__main__":
    main()
