"""`emotalk-fast`: animate, info, convert, bench. Errors print one line and exit non-zero."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _animate(args) -> None:
    from .animator import Animator

    out = Path(args.output)
    if out.suffix.lower() not in (".csv", ".npy", ".json"):
        raise ValueError(f"output {out.name} must end in .csv, .npy or .json")
    t0 = time.perf_counter()
    animator = Animator.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
    t1 = time.perf_counter()
    anim = animator.animate(args.input, level=args.level, person=args.person,
                            postprocess=args.postprocess, seed=args.seed)
    t2 = time.perf_counter()
    anim.save(out)
    top = max(anim.emotion.items(), key=lambda kv: kv[1])
    print(f"{out}: {anim.num_frames} frames ({anim.duration:.2f} s at {anim.fps} fps); "
          f"load {t1 - t0:.2f} s, animate {t2 - t1:.2f} s; emotion {top[0]} ({top[1]:.2f})")


def _info(args) -> None:
    from . import checkpoint as ckpt

    cfg, sd = ckpt.load_any(args.checkpoint)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    kind = "emotalk_fast directory" if Path(args.checkpoint).is_dir() else "release state dict"
    info = {
        "format": kind,
        "parameters": sum(v.numel() for v in sd.values()),
        "dtypes": dtypes,
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    c, e, d = cfg.content, cfg.emotion, cfg.decoder
    print(f"{args.checkpoint}: {kind}, {info['parameters'] / 1e6:.1f} M parameters (inference layout), "
          f"dtype {', '.join(dtypes)}")
    for name, enc in (("content encoder", c), ("emotion encoder", e)):
        print(f"  {name}: wav2vec2 {enc.num_layers} layers x {enc.hidden_size} ({enc.num_heads} heads), "
              f"ff {enc.intermediate_size}, CNN {list(enc.conv_dim)}")
    print(f"  decoder: {d.feature_dim} wide, {d.num_heads} heads, period {d.period}, ppe {d.ppe}, "
          f"{d.num_levels} levels, {d.num_persons} persons, {d.num_blendshapes} blendshapes")
    print(f"  emotion labels: {', '.join(cfg.emotion_labels)}")


def _convert(args) -> None:
    from . import checkpoint as ckpt

    src = Path(args.checkpoint)
    if src.is_dir():
        raise ValueError(f"{src} is already an emotalk_fast directory; convert takes a release .pth file")
    cfg, sd = ckpt.load_release_checkpoint(src)
    out = ckpt.save_pretrained(sd, cfg, args.output)
    print(f"wrote {out / ckpt.CONFIG_NAME} and {out / ckpt.WEIGHTS_NAME} "
          f"({sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters)")


def _bench(args) -> None:
    from .bench import run_bench

    run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotalk-fast", description="Speech to 52 ARKit blendshapes with EmoTalk.")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("animate", help="animate an audio file with a checkpoint")
    a.add_argument("input", help="audio file (wav, flac, ogg, ...; any sample rate, mono or stereo)")
    a.add_argument("-o", "--output", required=True, help="output .csv, .npy or .json")
    a.add_argument("--checkpoint", required=True, help="EmoTalk.pth or a converted directory")
    a.add_argument("--level", type=int, default=1, help="emotion level 0 or 1 (default 1)")
    a.add_argument("--person", type=int, default=0, help="speaking style 0..23 (default 0)")
    a.add_argument("--postprocess", action="store_true", help="smoothing and blinks as in the release demo")
    a.add_argument("--seed", type=int, default=None, help="seed for the blinks of --postprocess")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    a.set_defaults(func=_animate)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)

    c = sub.add_parser("convert", help="convert a released EmoTalk.pth to this library's format")
    c.add_argument("checkpoint", help="EmoTalk.pth")
    c.add_argument("output", help="output directory (config.json + model.safetensors)")
    c.set_defaults(func=_convert)

    b = sub.add_parser("bench", help="time the release-size model on random weights (no download)")
    b.add_argument("--seconds", type=float, default=10.0, help="length of the generated speech")
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default=None, help="float32 (default), bfloat16 (fast on CPUs with AVX512-BF16/AMX "
                                                 "and on GPUs) or float16 (GPU)")
    b.add_argument("--preset", default="emotalk", help="model size: emotalk (release), mini, tiny")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--skip-startup", action="store_true", help="do not time start-up (it writes a checkpoint "
                                                              "of the model's size to a temporary directory)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"emotalk-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"emotalk-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
