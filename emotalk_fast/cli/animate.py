"""The file commands: animate (one file, many, folders, pipes), preview, info, convert, export-onnx."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..model.config import FPS
from ..io.corpus import STDIO, animate_corpus, parse_shard, plan_jobs, shard
from ..errors import InvalidInput, install_hint
from ..files import require_folder
from .options import add_model_options, add_stream_options, load_animator, model_config, parse_level, parse_person, \
    parse_schedule, progress_lines, stream_settings, warn


def animate(args) -> None:
    from ..io.curves import TEXT_FORMATS, check_output

    # --- everything is checked before the model loads ---
    extension = f".{args.to}"
    jobs = plan_jobs(args.inputs, args.output, extension)
    many = len(jobs) > 1 or jobs[0].output != args.output  # a directory of outputs
    if args.shard:
        jobs = shard(jobs, *parse_shard(args.shard))
    for job in jobs:
        if job.output == STDIO:
            if extension not in TEXT_FORMATS or args.format:
                raise InvalidInput("-o - writes CSV or JSON text: use --to csv or --to json (no --format)")
        else:
            check_output(job.output, args.format, make_parents=many)
    skipped = [] if args.overwrite or not many else [j for j in jobs if Path(j.output).exists()]
    jobs = [j for j in jobs if j not in skipped]
    if args.batch_size < 1:
        raise InvalidInput(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_frames is not None and many:
        raise InvalidInput("--num-frames sets one clip's length; give one input")
    schedule = _check_style_options(args)
    stdin_audio = _read_stdin() if any(j.source == STDIO for j in jobs) else None
    if args.num_frames is not None and jobs:
        _check_num_frames(args.num_frames, jobs[0].source, stdin_audio)

    if not jobs:
        print(f"nothing to do: {len(skipped)} outputs exist (--overwrite to redo them)", file=sys.stderr)
        return
    if not many:  # audio that is not audio, or too short for the model: said before the model loads
        from ..animator import min_samples
        from ..io.audio import prepare_audio

        audio, rate = stdin_audio if jobs[0].source == STDIO else (jobs[0].source, None)
        prepare_audio(audio, rate, min_samples=min_samples(model_config(args)))
    t0 = time.perf_counter()
    print(f"[animate] loading {args.checkpoint or 'random weights'}", file=sys.stderr, flush=True)
    animator = load_animator(args)
    t1 = time.perf_counter()
    print(f"[animate] loaded in {t1 - t0:.1f} s; animating {len(jobs)} input{'s' if len(jobs) > 1 else ''}",
          file=sys.stderr, flush=True)
    options = dict(level=1 if args.level is None else args.level, person=0 if args.person is None else args.person,
                   postprocess=args.postprocess, seed=args.seed, emotion_reference=args.emotion_reference,
                   schedule=schedule, num_frames=args.num_frames)
    info = sys.stderr if any(j.output == STDIO for j in jobs) else sys.stdout  # stdout may be the data
    if not many:
        audio, rate = stdin_audio if jobs[0].source == STDIO else (jobs[0].source, None)
        anim = animator.animate(audio, sample_rate=rate, progress=progress_lines("animate", "window"), **options)
        t2 = time.perf_counter()
        _write(anim, jobs[0].output, args, extension)
        top = max(anim.emotion.items(), key=lambda kv: kv[1])
        print(f"{jobs[0].output if jobs[0].output != STDIO else 'stdout'}: {anim.num_frames} frames "
              f"({anim.duration:.2f} s at {anim.fps} fps); load {t1 - t0:.2f} s, animate {t2 - t1:.2f} s; "
              f"emotion {top[0]} ({top[1]:.2f})", file=info)
        if args.print_emotion:
            _print_emotion(anim, info)
        return
    failures = animate_corpus(animator, jobs, options, lambda anim, output: _write(anim, output, args, extension),
                              args.batch_size,
                              lambda done, total: print(f"[animate] {done}/{total} files", file=sys.stderr, flush=True))
    done = len(jobs) - len(failures)
    print(f"{done} animated, {len(skipped)} skipped (output exists; --overwrite to redo), {len(failures)} failed; "
          f"load {t1 - t0:.1f} s, animate {time.perf_counter() - t1:.1f} s", file=info)
    for source, message in failures:
        print(f"  failed: {source}: {message}", file=sys.stderr)
    if failures:
        raise SystemExit(1)


def _write(anim, output: str, args, extension: str) -> None:
    from ..io.curves import TEXT_FORMATS

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
    from ..model.style import Schedule, check_style

    if args.crossfade and not args.schedule:
        warn("--crossfade only applies with --schedule; ignored")
    if args.seed is not None and not args.postprocess:
        warn("--seed only applies with --postprocess (its blinks); ignored")
    if args.schedule and (args.level is not None or args.person is not None):
        warn("--schedule sets level and person; --level/--person ignored")
    cfg = model_config(args)
    if args.schedule:
        schedule = Schedule(parse_schedule(args.schedule), crossfade_s=args.crossfade)
        schedule.weights(cfg, 1)  # checks every entry's level and person
        return schedule
    check_style(cfg, 1 if args.level is None else args.level, 0 if args.person is None else args.person)
    return None


MAX_FRAMES_FACTOR = 10  # --num-frames beyond this multiple of the audio's own count is a mistake


def _check_num_frames(num_frames: int, source: str, stdin_audio) -> None:
    import math

    if num_frames < 1:
        raise InvalidInput(f"--num-frames must be >= 1, got {num_frames}")
    if stdin_audio is not None:
        seconds = stdin_audio[0].shape[-1] / stdin_audio[1]
    else:
        import soundfile

        try:
            seconds = soundfile.info(source).duration
        except Exception:  # noqa: BLE001 - unreadable: animate says why
            return
    own = max(1, math.ceil(seconds * FPS))
    if num_frames > MAX_FRAMES_FACTOR * own:
        raise InvalidInput(f"--num-frames {num_frames} is more than {MAX_FRAMES_FACTOR}x the {own} frames of "
                           f"{seconds:.2f} s of audio; leave it out to get the audio's own count")


def _read_stdin():
    from ..io.audio import read_audio_bytes

    return read_audio_bytes(sys.stdin.buffer.read(), "stdin")


def info(args) -> None:
    from ..model import checkpoint as ckpt

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


def convert(args) -> None:
    from ..model import checkpoint as ckpt

    import torch

    from ..runtime.device import resolve_dtype

    src, dst = Path(args.checkpoint), Path(args.output)
    if src.is_dir():
        raise InvalidInput(f"{src} is already an emotalk_fast directory; convert takes a release .pth file")
    if not args.overwrite and (dst.is_file() or (dst.is_dir() and any(dst.iterdir()))):
        raise InvalidInput(f"{dst} exists and is not empty; pass --overwrite to replace what is there")
    if dst.exists() and not dst.is_dir():
        raise InvalidInput(f"{dst} is a file; convert writes a directory")
    dtype = resolve_dtype(args.dtype)
    cfg, sd = ckpt.load_release_checkpoint(src)
    if dtype != torch.float32:  # stored as it will run: no cast at every start-up
        sd = {k: v.to(dtype) for k, v in sd.items()}
    out = ckpt.save_pretrained(sd, cfg, dst)
    print(f"wrote {out / ckpt.CONFIG_NAME} and {out / ckpt.WEIGHTS_NAME} "
          f"({sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters, {str(dtype).replace('torch.', '')})")


def export_onnx(args) -> None:
    import importlib.util

    # --- everything is checked before the model loads ---
    out = Path(args.output)
    if out.suffix != ".onnx":
        raise InvalidInput(f"the output must be a .onnx file, got {out}")
    require_folder(out)  # the one rule of a single output: its folder exists, the file is replaced
    if not args.seconds > 0:
        raise InvalidInput(f"--seconds must be > 0, got {args.seconds}")
    if not args.streaming:
        given = [f for f, default in EXPORT_STREAM_DEFAULTS.items() if getattr(args, f) != default]
        if given:
            raise InvalidInput(f"{', '.join('--' + f.replace('_', '-') for f in given)}: options of "
                               "export-onnx --streaming (the fixed-length graph has no hops)")
    elif args.seconds != EXPORT_SECONDS:
        raise InvalidInput("--seconds is the fixed-length graph's: a streaming export takes any length")
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInput(f"export-onnx needs {' and '.join(missing)}: {install_hint('onnx')}")
    if args.dtype is not None and args.dtype.lower() not in ("float32", "fp32"):
        raise InvalidInput("the ONNX export is float32 (runtimes pick their own precision): drop --dtype")
    if args.device not in ("auto", "cpu"):
        raise InvalidInput("the export traces the model on the CPU: drop --device")
    if args.streaming:
        return export_stream_onnx(args, out)
    from ..export.onnx_export import export_onnx as export, metadata_path, parity

    animator = load_animator(args, device="cpu")
    t0 = time.perf_counter()
    print(f"[export-onnx] tracing the model for {args.seconds:g} s of audio (the release size: about a "
          "minute and 6 GB of memory)", file=sys.stderr, flush=True)
    meta = export(animator.model, out, args.seconds)
    size = sum(p.stat().st_size for p in (out, out.with_name(out.name + ".data")) if p.exists()) / 1e6  # + weights
    print(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.0f} s: wave [1, {meta['num_samples']}] at "
          f"16 kHz, level [1, {meta['num_levels']}], person [1, {meta['num_persons']}] -> blendshapes "
          f"[1, {meta['num_frames']}, 52], emotion_logits; its metadata also in {metadata_path(out).name}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: the graph was not run (pip install onnxruntime to check it)")
        return
    blendshapes, logits = parity(animator.model, out)
    print(f"ONNX Runtime vs PyTorch on noise speech: max abs difference {blendshapes:.2g} (blendshapes), "
          f"{logits:.2g} (emotion logits)")


def export_stream_onnx(args, out: Path) -> None:
    """export-onnx --streaming: the incremental hop with its states explicit (export/onnx_stream.py)."""
    import importlib.util

    from ..export.onnx_export import metadata_path
    from ..export.onnx_stream import export_stream_onnx as export

    settings = stream_settings(args)
    animator = load_animator(args, device="cpu")
    t0 = time.perf_counter()
    print("[export-onnx] tracing one streaming hop (the release size: about a minute)", file=sys.stderr, flush=True)
    meta = export(animator.model, out, settings)
    size = sum(p.stat().st_size for p in (out, out.with_name(out.name + ".data")) if p.exists()) / 1e6
    print(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.0f} s: one hop of {meta['hop_ms']} ms, "
          f"lookahead {meta['lookahead_ms']} ms, context {meta['context_ms']} ms, decoder history "
          f"{int(meta['cache_frames']) / 30:g} s; its metadata also in {metadata_path(out).name}; run it with "
          "examples/onnx_stream.py")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: the graph was not run (pip install onnxruntime to check it)")


def preview(args) -> None:
    from ..io.curves import load_blendshapes
    from ..io.preview import save_preview

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".mp4", ".gif"):
        raise InvalidInput(f"output {out.name} must end in .png, .mp4 or .gif")
    require_folder(out)
    if args.audio is not None and not Path(args.audio).is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    curves, names, fps, emotion = load_blendshapes(args.animation)
    if args.audio is not None:
        import soundfile

        try:
            audio_s = soundfile.info(str(args.audio)).duration
        except RuntimeError:
            audio_s = None  # unreadable: save_preview says so
        if audio_s is not None and abs(audio_s - len(curves) / fps) > 1 / fps:
            warn(f"the audio is {audio_s:.2f} s but the animation {len(curves) / fps:.2f} s: is it the same take?")
    # a clip-level emotion (a .json from animate) is drawn as one span over the whole clip
    timeline = [(0.0, emotion)] if emotion else None
    try:
        save_preview(out, curves, names, fps, audio=args.audio, emotion_timeline=timeline)
    except ImportError as e:
        raise InvalidInput(str(e)) from None
    print(f"wrote {out} ({len(curves)} frames, {len(curves) / fps:.2f} s)")


def register(sub) -> None:
    """Add animate, info, preview and convert to the main CLI's subparsers."""
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
    a.set_defaults(func=animate)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint", help="EmoTalk.pth or a converted directory")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=info)

    w = sub.add_parser("preview", help="a PNG of the curves, or an MP4/GIF of a 2D face driven by them")
    w.add_argument("animation", help="an animation written by animate/stream/send (.csv, .npy or .json)")
    w.add_argument("-o", "--output", required=True, help="preview .png, .mp4 (with --audio's sound) or .gif")
    w.add_argument("--audio", help="the speech it animates: drawn as a waveform, and heard in the MP4")
    w.set_defaults(func=preview)

    c = sub.add_parser("convert", help="convert a released EmoTalk.pth to this library's format")
    c.add_argument("checkpoint", help="EmoTalk.pth")
    c.add_argument("output", help="output directory (config.json + model.safetensors)")
    c.add_argument("--dtype", default="float32", help="store the weights as float32, bfloat16 or float16 "
                                                      "(load with the same --dtype: no cast at start-up)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output directory")
    c.set_defaults(func=convert)

    x = sub.add_parser("export-onnx", help="the model as an ONNX graph for clips of one length (float32)")
    x.add_argument("-o", "--output", required=True, help="the .onnx file (the release size's weights go in a side "
                                                         "file next to it)")
    x.add_argument("--seconds", type=float, default=EXPORT_SECONDS,
                   help="the clip length the graph animates (another length needs another export: the frame grid "
                        "depends on it)")
    x.add_argument("--streaming", action="store_true",
                   help="one hop of a live stream instead, every state an input and an output: any length, pushed "
                        "as it comes (examples/onnx_stream.py runs it with ONNX Runtime alone; docs/game-engines.md)")
    add_stream_options(x, fields=tuple(EXPORT_STREAM_DEFAULTS), defaults=EXPORT_STREAM_DEFAULTS, live=False,
                       note="--streaming: ")
    add_model_options(x, encoders=False)  # the graph is the float32 model: runtimes compile it their own way
    x.set_defaults(func=export_onnx)


EXPORT_SECONDS = 4.0  # the fixed-length graph's default clip


def _export_stream_defaults() -> dict:
    """The settings a streaming export bakes in, with their defaults: the stream's, but for the
    decoder's history, which passes in and out of the graph each hop."""
    from ..streaming.settings import EXPORT_MAX_CACHE_S, StreamSettings

    d = StreamSettings()
    return dict(hop_ms=d.hop_ms, lookahead_ms=d.lookahead_ms, context_ms=d.context_ms,
                emotion_context_ms=d.emotion_context_ms, ramp=d.ramp, max_cache_s=EXPORT_MAX_CACHE_S)


EXPORT_STREAM_DEFAULTS = _export_stream_defaults()
