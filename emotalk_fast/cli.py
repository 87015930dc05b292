"""`emotalk-fast`: animate, preview, info, convert, stream, stream-eval, bench, serve, send, health, train, eval.

The library's own errors (bad input, a bad checkpoint, a missing file) print one line and exit
1; anything else is a bug and shows its traceback (as does every error with --debug).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from .config import BACKENDS


def _animate(args) -> None:
    from .corpus import STDIO, parse_shard, plan_jobs, shard
    from .export import TEXT_FORMATS, check_output

    # --- everything is checked before the model loads ---
    extension = f".{args.to}"
    jobs = plan_jobs(args.inputs, args.output, extension)
    many = len(jobs) > 1 or jobs[0].output != args.output  # a directory of outputs
    if args.shard:
        jobs = shard(jobs, *parse_shard(args.shard))
    for job in jobs:
        if job.output == STDIO:
            if extension not in TEXT_FORMATS or args.format:
                raise ValueError("-o - writes CSV or JSON text: use --to csv or --to json (no --format)")
        else:
            check_output(job.output, args.format, make_parents=many)
    skipped = [] if args.overwrite or not many else [j for j in jobs if Path(j.output).exists()]
    jobs = [j for j in jobs if j not in skipped]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_frames is not None and many:
        raise ValueError("--num-frames sets one clip's length; give one input")
    schedule = _check_style_options(args)
    stdin_audio = _read_stdin() if any(j.source == STDIO for j in jobs) else None
    if args.num_frames is not None and jobs:
        _check_num_frames(args.num_frames, jobs[0].source, stdin_audio)

    if not jobs:
        print(f"nothing to do: {len(skipped)} outputs exist (--overwrite to redo them)", file=sys.stderr)
        return
    t0 = time.perf_counter()
    print(f"[animate] loading {args.checkpoint or 'random weights'}", file=sys.stderr, flush=True)
    animator = _load_animator(args)
    t1 = time.perf_counter()
    print(f"[animate] loaded in {t1 - t0:.1f} s; animating {len(jobs)} input{'s' if len(jobs) > 1 else ''}",
          file=sys.stderr, flush=True)
    options = dict(level=1 if args.level is None else args.level, person=0 if args.person is None else args.person,
                   postprocess=args.postprocess, seed=args.seed, emotion_reference=args.emotion_reference,
                   schedule=schedule, num_frames=args.num_frames)
    info = sys.stderr if any(j.output == STDIO for j in jobs) else sys.stdout  # stdout may be the data
    if not many:
        audio, rate = stdin_audio if jobs[0].source == STDIO else (jobs[0].source, None)
        anim = animator.animate(audio, sample_rate=rate, progress=_progress_lines("animate", "window"), **options)
        t2 = time.perf_counter()
        _write(anim, jobs[0].output, args, extension)
        top = max(anim.emotion.items(), key=lambda kv: kv[1])
        print(f"{jobs[0].output if jobs[0].output != STDIO else 'stdout'}: {anim.num_frames} frames "
              f"({anim.duration:.2f} s at {anim.fps} fps); load {t1 - t0:.2f} s, animate {t2 - t1:.2f} s; "
              f"emotion {top[0]} ({top[1]:.2f})", file=info)
        if args.print_emotion:
            _print_emotion(anim, info)
        return
    failures = _animate_many(animator, jobs, args, options, extension)
    done = len(jobs) - len(failures)
    print(f"{done} animated, {len(skipped)} skipped (output exists; --overwrite to redo), {len(failures)} failed; "
          f"load {t1 - t0:.1f} s, animate {time.perf_counter() - t1:.1f} s", file=info)
    for source, message in failures:
        print(f"  failed: {source}: {message}", file=sys.stderr)
    if failures:
        raise SystemExit(1)


def _animate_many(animator, jobs, args, options, extension) -> list[tuple[str, str]]:
    """Jobs in batches of similar length (little padding) through animate_batch; a batch that
    fails is redone clip by clip so that one bad file costs only itself."""
    import soundfile

    def seconds(job):
        try:
            return soundfile.info(job.source).duration
        except Exception:  # noqa: BLE001 - unreadable: it fails (alone) when animated
            return 0.0

    ordered = sorted(jobs, key=seconds)
    batches = [ordered[i : i + args.batch_size] for i in range(0, len(ordered), args.batch_size)]
    failures, done = [], 0
    for batch in batches:
        try:
            anims = animator.animate_batch([j.source for j in batch], **options)
            results = list(zip(batch, anims, [None] * len(batch)))
        except (ValueError, TypeError, OSError, RuntimeError):
            results = []
            for job in batch:
                try:
                    results.append((job, animator.animate(job.source, **options), None))
                except (ValueError, TypeError, OSError, RuntimeError) as e:
                    results.append((job, None, str(e)))
        for job, anim, error in results:
            if error is None:
                try:
                    _write(anim, job.output, args, extension)
                except OSError as e:
                    error = str(e)
            if error is not None:
                failures.append((job.source, error))
        done += len(batch)
        print(f"[animate] {done}/{len(jobs)} files", file=sys.stderr, flush=True)
    return failures


def _write(anim, output: str, args, extension: str) -> None:
    from .export import TEXT_FORMATS

    if args.random_weights is not None:
        anim.metadata["random_weights"] = args.random_weights
    if output == "-":
        curves = anim.blendshapes.clip(0.0, 1.0) if args.clamp else anim.blendshapes
        sys.stdout.write(TEXT_FORMATS[extension](curves, anim.names, anim.fps, emotion=anim.emotion,
                                                 metadata=anim.metadata))
        sys.stdout.flush()
    else:
        anim.save(output, format=args.format, clamp=args.clamp)


def _print_emotion(anim, out) -> None:
    labels = anim.emotion_labels
    print("time    " + " ".join(f"{label[:8]:>8}" for label in labels), file=out)
    print("clip    " + " ".join(f"{anim.emotion[label]:8.3f}" for label in labels), file=out)
    for start, probs in anim.emotion_timeline:
        print(f"{start:6.1f}s " + " ".join(f"{probs[label]:8.3f}" for label in labels), file=out)


def _check_style_options(args):
    """Level, person and schedule against the model's config (read cheaply); warnings for options
    that would be ignored. Returns the Schedule, if any."""
    from .controls import Schedule, check_style

    if args.crossfade and not args.schedule:
        _warn("--crossfade only applies with --schedule; ignored")
    if args.seed is not None and not args.postprocess:
        _warn("--seed only applies with --postprocess (its blinks); ignored")
    if args.schedule and (args.level is not None or args.person is not None):
        _warn("--schedule sets level and person; --level/--person ignored")
    cfg = _model_config(args)
    if args.schedule:
        schedule = Schedule(parse_schedule(args.schedule), crossfade_s=args.crossfade)
        schedule.weights(cfg, 1)  # checks every entry's level and person
        return schedule
    check_style(cfg, 1 if args.level is None else args.level, 0 if args.person is None else args.person)
    return None


def _model_config(args):
    from . import checkpoint as ckpt
    from .config import EmoTalkConfig

    if args.random_weights is not None:
        return EmoTalkConfig.from_name(args.random_weights)
    return ckpt.read_config(args.checkpoint)


MAX_FRAMES_FACTOR = 10  # --num-frames beyond this multiple of the audio's own count is a mistake


def _check_num_frames(num_frames: int, source: str, stdin_audio) -> None:
    import math

    if num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {num_frames}")
    if stdin_audio is not None:
        seconds = stdin_audio[0].shape[-1] / stdin_audio[1]
    else:
        import soundfile

        try:
            seconds = soundfile.info(source).duration
        except Exception:  # noqa: BLE001 - unreadable: animate says why
            return
    own = max(1, math.ceil(seconds * 30))
    if num_frames > MAX_FRAMES_FACTOR * own:
        raise ValueError(f"--num-frames {num_frames} is more than {MAX_FRAMES_FACTOR}x the {own} frames of "
                         f"{seconds:.2f} s of audio; leave it out to get the audio's own count")


def _read_stdin():
    from .audio import read_audio_bytes

    return read_audio_bytes(sys.stdin.buffer.read(), "stdin")


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=2)


def _progress_lines(command: str, unit: str):
    """progress(done, total) -> one line per step on stderr (reads well in a log file)."""
    def report(done: int, total: int) -> None:
        print(f"[{command}] {unit} {done}/{total}", file=sys.stderr, flush=True)

    return report


def parse_level(text: str):
    """'1' -> 1 (an index); '0.3' -> 0.3 (a blend of the two levels)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level must be 0, 1 or a float in [0, 1], got {text!r}") from None


def parse_person(text: str):
    """'3' -> 3; '3:0.7,12:0.3' -> {3: 0.7, 12: 0.3} (a mix of speaking styles)."""
    try:
        if ":" not in text:
            return int(text)
        return {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"person must be an index or a mix like 3:0.7,12:0.3, got {text!r}") \
            from None


def parse_schedule(text: str) -> tuple:
    """'0:1:0,2.5:0:5' -> ((0.0, 1, 0), (2.5, 0, 5)): start seconds, level, person."""
    try:
        entries = []
        for part in text.split(","):
            start, level, person = part.split(":")
            entries.append((float(start), parse_level(level), int(person)))
        return tuple(entries)
    except (ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"--schedule takes START:LEVEL:PERSON,... (e.g. 0:1:0,2.5:0:5), got {text!r}") from None


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

    import torch

    from .runtime import resolve_dtype

    src, dst = Path(args.checkpoint), Path(args.output)
    if src.is_dir():
        raise ValueError(f"{src} is already an emotalk_fast directory; convert takes a release .pth file")
    if not args.overwrite and (dst.is_file() or (dst.is_dir() and any(dst.iterdir()))):
        raise ValueError(f"{dst} exists and is not empty; pass --overwrite to replace what is there")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} is a file; convert writes a directory")
    dtype = resolve_dtype(args.dtype)
    cfg, sd = ckpt.load_release_checkpoint(src)
    if dtype != torch.float32:  # stored as it will run: no cast at every start-up
        sd = {k: v.to(dtype) for k, v in sd.items()}
    out = ckpt.save_pretrained(sd, cfg, dst)
    print(f"wrote {out / ckpt.CONFIG_NAME} and {out / ckpt.WEIGHTS_NAME} "
          f"({sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters, {str(dtype).replace('torch.', '')})")


def _preview(args) -> None:
    from .export import load_blendshapes
    from .preview import save_preview

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".mp4", ".gif"):
        raise ValueError(f"output {out.name} must end in .png, .mp4 or .gif")
    if not out.parent.is_dir():
        raise ValueError(f"output directory {out.parent} does not exist")
    if args.audio is not None and not Path(args.audio).is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    curves, names, fps, _ = load_blendshapes(args.animation)
    try:
        save_preview(out, curves, names, fps, audio=args.audio)
    except ImportError as e:
        raise ValueError(str(e)) from None
    print(f"wrote {out} ({len(curves)} frames, {len(curves) / fps:.2f} s)")


def _load_animator(args):
    from .animator import Animator

    if args.random_weights is not None:  # asked for by name, and said out loud
        print(f"emotalk-fast {args.command}: RANDOM weights ({args.random_weights} preset): the output means "
              "nothing (for tests and benchmarks)", file=sys.stderr, flush=True)
        return Animator.from_config(args.random_weights, device=args.device, dtype=args.dtype, backend=args.backend)
    return Animator.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, backend=args.backend)


def _stream(args) -> None:
    import numpy as np

    from .audio import prepare_audio
    from .live import describe, make_targets, stream_live
    from .streaming import play

    from .controls import check_style
    from .export import check_output

    targets = make_targets(args.livelink, args.vmc, args.subject, args.vmc_names)  # live targets, checked first
    if args.output:
        check_output(args.output)
    check_style(_model_config(args), args.level, args.person)
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"audio file not found: {args.input}")
    animator = _load_animator(args)
    stream = animator.stream(level=args.level, person=args.person, hop_ms=args.hop_ms,
                             lookahead_ms=args.lookahead_ms, context_ms=args.context_ms)
    samples = prepare_audio(args.input, min_samples=animator.min_samples)
    print(f"streaming {len(samples) / 16000:.2f} s in {args.hop_ms} ms hops"
          f"{' in real time' if args.realtime else ''}; algorithmic latency {stream.latency_ms:.0f} ms")
    hop_s, algo_s, computes, done = args.hop_ms / 1000, stream.latency_ms / 1000, [], [0]

    def on_hop(i, frames, compute_s, wall_s):
        computes.append(compute_s)
        if len(frames):
            # wall-clock age of the hop's first frame when it came out (real-time mode), else
            # the algorithmic latency plus this hop's compute
            first = done[0] / 30
            latency = wall_s - first if args.realtime else algo_s + compute_s
            print(f"hop {i:4d}: +{len(frames)} frames (to {done[0] + len(frames)}), compute {1000 * compute_s:6.1f} ms, "
                  f"first-frame latency {1000 * latency:6.0f} ms")
            done[0] += len(frames)

    if targets:  # --livelink / --vmc: paced at 30 fps on the audio clock
        frames, stats = stream_live(stream, samples, targets, realtime=args.realtime, on_hop=on_hop)
        for t in targets:
            t.close()
    else:
        frames = play(stream, samples, int(hop_s * 16000), realtime=args.realtime, on_hop=on_hop)
    print(f"{len(frames)} frames; compute per hop median {1000 * float(np.median(computes)):.1f} ms, "
          f"max {1000 * max(computes):.1f} ms (real time needs < {args.hop_ms} ms)")
    if targets:
        print(describe(stats))
    if args.output:
        from .animator import Animation

        anim = Animation(frames, stream.emotion_logits, animator.config.emotion_labels)
        if args.random_weights is not None:
            anim.metadata["random_weights"] = args.random_weights
        path = anim.save(args.output, clamp=args.clamp)
        print(f"wrote {path}")


def _stream_eval(args) -> None:
    from .measure import generated_speech
    from .stream_eval import evaluate, markdown_table

    contexts, lookaheads = _ms_list("--contexts", args.contexts), _ms_list("--lookaheads", args.lookaheads)
    animator = _load_animator(args)
    speech = generated_speech(args.seconds)

    def report(done, total, setting):
        print(f"[stream-eval] [{done + 1}/{total}] {setting}", file=sys.stderr, flush=True)

    rows = evaluate(animator, speech, contexts, lookaheads, args.hop_ms, progress=report)
    print(markdown_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2))


def _ms_list(option: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes milliseconds separated by commas, e.g. 1000,2000; got {text!r}") from None


def _bench(args) -> None:
    from .bench import format_bench, run_bench

    def report(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    result = run_bench(seconds=args.seconds, device=args.device, dtype=args.dtype, preset=args.preset,
                       repeats=args.repeats, threads=args.threads, skip_startup=args.skip_startup, progress=report)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --backend: where and how a model runs (every command that loads one)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 (fast on CPUs with AVX512-BF16/AMX "
                                                 "and on GPUs) or float16 (GPU)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="decoder kernels: auto (Triton on CUDA, PyTorch on CPU), torch or triton (default auto)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model: a checkpoint, or random weights asked for by name (never by accident); and
    where it runs."""
    from .config import PRESETS

    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="EmoTalk.pth or a converted directory")
    model.add_argument("--random-weights", metavar="PRESET", choices=sorted(PRESETS),
                       help=f"random weights of this size instead ({', '.join(sorted(PRESETS))}): the output "
                            "means nothing (tests and benchmarks)")
    add_runtime_options(p)


def add_stream_options(p: argparse.ArgumentParser) -> None:
    """--hop-ms, --lookahead-ms, --context-ms: a stream's windows (stream, stream-eval, serve)."""
    p.add_argument("--hop-ms", type=int, default=100, help="multiple of 100 (default 100)")
    p.add_argument("--lookahead-ms", type=int, default=200, help="multiple of 100 (default 200)")
    p.add_argument("--context-ms", type=int, default=2000, help="multiple of 100 (default 2000)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="emotalk-fast", description="Speech to 52 ARKit blendshapes with EmoTalk.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"emotalk-fast {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_parser_with(_HelpFormatter))

    a = sub.add_parser("animate", help="animate audio files with a checkpoint")
    a.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files (wav, flac, ogg, ...; any rate, mono or stereo), folders (searched "
                        "recursively) or - for stdin")
    a.add_argument("-o", "--output", required=True,
                   help="output .csv, .npy or .json for one input; a directory (made if missing) for many, "
                        "names mirroring the inputs; - for stdout (CSV or JSON, see --to)")
    a.add_argument("--to", choices=("csv", "npy", "json"), default="csv",
                   help="format of outputs named for you (a directory, or stdout)")
    a.add_argument("--overwrite", action="store_true",
                   help="redo outputs that exist in a directory (one named output is always written)")
    a.add_argument("--shard", metavar="K/N", help="animate only the K-th of N deterministic shares of the "
                                                  "inputs (K from 1), to spread a corpus over machines")
    a.add_argument("--batch-size", type=int, default=8, help="clips per batch when animating many (similar "
                                                             "lengths are batched together)")
    a.add_argument("--clamp", action="store_true", help="write weights clamped to [0, 1] (the model's raw "
                                                        "output strays a little outside)")
    a.add_argument("--level", type=parse_level, default=None,
                   help="emotion level 0 or 1, or a float in [0, 1] blending them (default 1)")
    a.add_argument("--person", type=parse_person, default=None,
                   help="speaking style 0..23, or a mix like 3:0.7,12:0.3 (default 0)")
    a.add_argument("--emotion-reference", help="take the emotion from this audio file (emotion transfer)")
    a.add_argument("--schedule", help="style changes START:LEVEL:PERSON,... in seconds, e.g. 0:1:0,2.5:0:5 "
                                      "(replaces --level/--person)")
    a.add_argument("--crossfade", type=float, default=0.0, help="seconds to fade between scheduled styles")
    a.add_argument("--num-frames", type=int, default=None, help="output frame count (default from the length)")
    a.add_argument("--print-emotion", action="store_true", help="print emotion probabilities per second")
    a.add_argument("--format", choices=("livelinkface",), default=None,
                   help="livelinkface: write the .csv as Unreal's Live Link Face app records it")
    a.add_argument("--postprocess", action="store_true", help="smoothing and blinks as in the release demo")
    a.add_argument("--seed", type=int, default=None, help="seed for the blinks of --postprocess")
    add_model_options(a)
    a.set_defaults(func=_animate)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint", help="EmoTalk.pth or a converted directory")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)

    w = sub.add_parser("preview", help="a PNG of the curves, or an MP4/GIF of a 2D face driven by them")
    w.add_argument("animation", help="an animation written by animate/stream/send (.csv, .npy or .json)")
    w.add_argument("-o", "--output", required=True, help="preview .png, .mp4 (with --audio's sound) or .gif")
    w.add_argument("--audio", help="the speech it animates: drawn as a waveform, and heard in the MP4")
    w.set_defaults(func=_preview)

    c = sub.add_parser("convert", help="convert a released EmoTalk.pth to this library's format")
    c.add_argument("checkpoint", help="EmoTalk.pth")
    c.add_argument("output", help="output directory (config.json + model.safetensors)")
    c.add_argument("--dtype", default="float32", help="store the weights as float32, bfloat16 or float16 "
                                                      "(load with the same --dtype: no cast at start-up)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output directory")
    c.set_defaults(func=_convert)

    s_ = sub.add_parser("stream", help="stream a file in hops as if from a microphone")
    s_.add_argument("input", help="audio file")
    s_.add_argument("-o", "--output", help="write the frames (.csv, .npy or .json)")
    s_.add_argument("--clamp", action="store_true", help="write weights clamped to [0, 1]")
    s_.add_argument("--realtime", action="store_true", help="push each hop only when it would have been spoken")
    s_.add_argument("--level", type=parse_level, default=1, help="0, 1 or a float in [0, 1] (default 1)")
    s_.add_argument("--person", type=parse_person, default=0, help="0..23 or a mix like 3:0.7,12:0.3")
    # --- live targets ---
    s_.add_argument("--livelink", metavar="HOST:PORT",
                    help="send frames to Unreal's Live Link Face source (port 11111 when omitted)")
    s_.add_argument("--vmc", metavar="HOST:PORT",
                    help="send frames to a VMC protocol receiver, e.g. VSeeFace (port 39539 when omitted)")
    s_.add_argument("--subject", default="EmoTalk", help="Live Link subject name (default EmoTalk)")
    s_.add_argument("--vmc-names", choices=("perfect_sync", "arkit"), default="perfect_sync",
                    help="VMC blendshape names: PascalCase Perfect Sync (default) or camelCase ARKit")
    # --- end live targets ---
    add_model_options(s_)
    add_stream_options(s_)
    s_.set_defaults(func=_stream)

    e = sub.add_parser("stream-eval", help="streaming vs offline: deviation, latency, compute per hop")
    e.add_argument("--seconds", type=float, default=8.0, help="length of the generated speech")
    e.add_argument("--contexts", default="1000,2000,4000",
                   help="context settings to compare, in ms, comma-separated (multiples of 100)")
    e.add_argument("--lookaheads", default="100,200,400",
                   help="lookahead settings to compare, in ms, comma-separated (multiples of 100)")
    e.add_argument("--hop-ms", type=int, default=100, help="hop of every setting, a multiple of 100 ms")
    e.add_argument("--json", help="also write the rows as JSON here")
    add_model_options(e)
    e.set_defaults(func=_stream_eval)

    b = sub.add_parser("bench", help="time the release-size model on random weights (no download)")
    b.add_argument("--seconds", type=float, default=10.0, help="length of the generated speech")
    add_runtime_options(b)
    b.add_argument("--preset", default="emotalk", help="model size: emotalk (release), mini, tiny")
    b.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--skip-startup", action="store_true", help="do not time start-up (it writes a checkpoint "
                                                              "of the model's size to a temporary directory)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=_bench)

    # serve / send / health live in emotalk_fast.serve.cli (grpc is imported when they run)
    from .serve.cli import register as register_service

    register_service(sub, add_model_options, add_stream_options)

    # train / eval live in emotalk_fast.training; its cli module imports only argparse, and
    # the handlers import torch, transformers and the trainer when they run.
    from .training.cli import register as register_training

    register_training(sub)
    return p


def _parser_with(formatter):
    class Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", formatter)
            super().__init__(*args, **kwargs)

    return Parser


def is_library_error(e: BaseException) -> bool:
    """A file-system error, or a ValueError/TypeError raised by emotalk_fast's own checks (not
    from inside torch or numpy, where it would be a bug)."""
    if isinstance(e, OSError):
        return True
    if not isinstance(e, (ValueError, TypeError)) or e.__traceback__ is None:
        return False
    raised_in = os.path.abspath(traceback.extract_tb(e.__traceback__)[-1].filename)
    # emotalk_fast and its subpackages (kernels/ and training/ sit beside it in a checkout)
    roots = [os.path.dirname(importlib.import_module(f"{__package__}{sub}").__file__)
             for sub in ("", ".kernels", ".training")]
    return any(raised_in.startswith(os.path.abspath(r) + os.sep) for r in roots)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"emotalk-fast {args.command}: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = one_line
    try:
        args.func(args)
    except Exception as e:
        if args.debug or not is_library_error(e):
            raise
        print(f"emotalk-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"emotalk-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
