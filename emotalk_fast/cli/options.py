"""What the commands share: the model and stream options, a public model loader, argument
parsers for styles, and how progress and warnings are printed. Only argparse is imported here;
each helper imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import sys

from ..model.config import BACKENDS
from ..errors import InvalidInput


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
        raise InvalidInput(f"--schedule takes START:LEVEL:PERSON,... (e.g. 0:1:0,2.5:0:5), got {text!r}") from None


def ms_list(option: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise InvalidInput(f"{option} takes milliseconds separated by commas, e.g. 1000,2000; got {text!r}") from None


def model_config(args):
    from ..model import checkpoint as ckpt
    from ..model.config import EmoTalkConfig

    if args.random_weights is not None:
        return EmoTalkConfig.from_name(args.random_weights)
    return ckpt.read_config(args.checkpoint)


def load_animator(args, threads: int | None = None, device: str | None = None):
    """The model the options name; `threads`: torch's CPU threads (default --threads); `device`:
    where it must run, whatever --device says (default --device)."""
    from ..animator import Animator

    from ..runtime.threads import set_threads

    set_threads(args.threads if threads is None else threads, "--threads")
    encoders = encoder_backend(args)
    runtime = dict(device=device or args.device, dtype=args.dtype, backend=args.backend, encoders=encoders)
    if args.random_weights is not None:  # asked for by name, and said out loud
        print(f"emotalk-fast {args.command}: RANDOM weights ({args.random_weights} preset): the output means "
              "nothing (for tests and benchmarks)", file=sys.stderr, flush=True)
        animator = Animator.from_config(args.random_weights, **runtime, warn_random=False)
    else:
        animator = Animator.from_pretrained(args.checkpoint, **runtime)
    if isinstance(args.dtype, str) and args.dtype.lower() == "auto":
        from ..runtime.device import cpu_description, cpu_has_native_bf16

        chose = str(animator.dtype).replace("torch.", "")
        if animator.device.type != "cpu":
            why = f"{chose} ({animator.device})"
        elif not cpu_has_native_bf16():
            why = f"{chose} (CPU {cpu_description()})"
        else:  # measured: say what
            from ..runtime.dtype_choice import cpu_dtype_choice

            why = f"{cpu_dtype_choice(cpu_description()).describe()} (CPU {cpu_description()})"
        print(f"emotalk-fast {args.command}: --dtype auto chose {why}", file=sys.stderr, flush=True)
    return animator


def encoder_backend(args):
    """The --encoders backend, refusing in the flags' words what it cannot run here (before any
    model loads): the device and dtype asked for, a command that is not a live stream's."""
    from ..backends.registry import AUTO
    from ..runtime.device import resolve_dtype

    backend = named_backend(args)
    if getattr(args, "cache_dir", None) is not None:
        if not backend.capabilities.exports and args.encoders != AUTO:
            raise InvalidInput(f"--cache-dir keeps exports, and --encoders {backend.name} makes none: drop it")
        backend.cache_dir = args.cache_dir
    device = run_device(args, backend)
    backend.verify(device, resolve_dtype(args.dtype, device), flags=True,
                   offline=args.command not in ("stream", "serve"), encoding=getattr(args, "encoding", None))
    return backend


def run_device(args, backend=None):
    """The device the model will run on: --device, where "auto" is the CPU for encoders that run
    on the CPU only."""
    return (backend or named_backend(args)).resolve_device(args.device)


def named_backend(args):
    """The --encoders backend the model loads with (auto: the default's; a live command measures
    the others beside it, live_budget)."""
    from ..backends.registry import AUTO, DEFAULT, resolve

    return resolve(DEFAULT if args.encoders == AUTO else args.encoders)


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=2)


def progress_lines(command: str, unit: str):
    """progress(done, total) -> one line per step on stderr (reads well in a log file)."""
    def report(done: int, total: int) -> None:
        print(f"[{command}] {unit} {done}/{total}", file=sys.stderr, flush=True)

    return report


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --backend: where and how a model runs (every command that loads one)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default=None, help="float32 (default: the reference's precision), auto (the fastest "
                                                 "here: bfloat16 on GPUs; on a CPU with AVX512-BF16 or AMX the faster "
                                                 "of bfloat16 and float32, measured once, else float32), bfloat16 or "
                                                 "float16 (GPU)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="decoder kernels: auto (Triton on CUDA, PyTorch on CPU), torch or triton (default auto)")


def add_model_options(p: argparse.ArgumentParser, encoders: bool = True, live: bool = False) -> None:
    """The model: a checkpoint, or random weights asked for by name (never by accident); and
    where it runs (`encoders`: offer --encoders; without it, the model's own; `live`: a live
    command, whose --encoders default is auto)."""
    from ..model.config import PRESETS

    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="EmoTalk.pth or a converted directory")
    model.add_argument("--random-weights", metavar="PRESET", choices=sorted(PRESETS),
                       help=f"random weights of this size instead ({', '.join(sorted(PRESETS))}): the output "
                            "means nothing (tests and benchmarks)")
    add_threads_option(p)
    if encoders:
        add_encoders_option(p, live)
    else:
        from ..backends.registry import DEFAULT

        p.set_defaults(encoders=DEFAULT)
    add_runtime_options(p)


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads, torch's and the encoder backend's (default: torch's choice, one per core; serve "
                        "and stream on a CPU: one core fewer, left to their network, audio and pacing threads). On a "
                        "machine shared with other busy processes fewer threads hold steady where one per core can "
                        "run 2-3x slower")


def add_encoders_option(p: argparse.ArgumentParser, live: bool = False) -> None:
    """--encoders; a live command's (`live`) takes auto too, its default."""
    from ..backends.registry import AUTO, DEFAULT, names

    default = AUTO if live else DEFAULT
    auto = (f"{AUTO} (default): serve and stream --realtime time each installed backend with the model's own "
            "arithmetic or within its measured tolerance (torch, int8, onnx) at start-up and take the fastest, "
            "stream without --realtime takes torch; ") \
        if live else ""
    p.add_argument("--encoders", choices=(*names(), AUTO) if live else names(), default=default,
                   help=f"how the two wav2vec2 encoders run: {auto}torch{'' if live else ' (default)'}; int8: their "
                        "transformer layers as "
                        "int8 GEMMs on the CPU, rounded once and cached (--cache-dir), faster there, and the output moves "
                        "within a measured tolerance; openvino: compiled "
                        "by OpenVINO for the CPU, the same float32 arithmetic, faster on a stream's short windows "
                        "(the [openvino] extra); onnx: a live stream's incremental encoders in "
                        "ONNX Runtime, exported once and cached (--cache-dir), faster on some CPUs (stream and serve; "
                        "the [onnx] extra; see docs/performance.md)")
    p.add_argument("--cache-dir", default=None,
                   help="where exports and int8 weights are kept between runs (--encoders onnx, int8; default $EMOTALK_FAST_CACHE_DIR, else "
                        "~/.cache/emotalk_fast): a second start reads them instead of making them again")


# Every StreamSettings field as a flag: how to parse it and what it means; its default comes from
# StreamSettings (or from the command). tests/cli fails on a field with no entry here.
STREAM_FLAGS = {
    "hop_ms": (lambda live: grid_ms_arg("--hop-ms", allow_zero=False, allow_auto=live),
               "audio per hop, a multiple of 100"),
    "lookahead_ms": (lambda live: grid_ms_arg("--lookahead-ms"), "audio after a hop that it reads, a multiple of 100"),
    "context_ms": (lambda live: grid_ms_arg("--context-ms"), "audio before a hop that it reads, a multiple of 100"),
    "emotion_context_ms": (lambda live: grid_ms_arg("--emotion-context-ms"),
                           "the emotion branch's context, multiple of 100 (default: --context-ms)"),
    "emotion_hop_ms": (lambda live: grid_ms_arg("--emotion-hop-ms", allow_zero=False),
                       "windowed encoding: how often the emotion branch runs, a multiple of the hop up to hop + "
                       "lookahead (default: the largest, every third 100 ms hop; the hop itself runs it every hop). "
                       "Incremental encoding runs it every hop"),
    "whole_utterance_ms": (lambda live: int, "an utterance up to this long gets offline's emotion label, exactly, "
                                             "when it ends (0: never)"),
    "ramp": (None, "hops of 100, 200, 400, ... ms first, doubling up to --hop-ms: the first frames wait for 100 ms "
                   "of audio, not a whole hop"),
    "max_cache_s": (lambda live: float, "the decoder's history in seconds"),
    "encoding": (None, "windowed: each hop re-encodes its whole window; incremental: only its new rows, over the "
                       "kept keys and values of the context (windowed with --encoders openvino, which compiles each "
                       "encoder whole; docs/streaming.md)"),
}
LIVE_STREAM_FIELDS = ("hop_ms", "lookahead_ms", "context_ms", "emotion_context_ms", "emotion_hop_ms",
                      "whole_utterance_ms", "ramp", "encoding")  # serve's cache is --max-audio-s


def add_stream_options(p: argparse.ArgumentParser, fields: tuple[str, ...] = LIVE_STREAM_FIELDS,
                       defaults: dict | None = None, live: bool = True, note: str = "") -> dict:
    """One flag per StreamSettings field in `fields` (stream, stream-eval, serve, export-onnx
    --streaming), generated from STREAM_FLAGS, defaults StreamSettings' own unless `defaults`
    says otherwise; `live`: --hop-ms takes auto and its default depends on the command; `note`
    starts each help. -> the defaults used."""
    from dataclasses import fields as dataclass_fields

    from ..streaming.settings import ENCODINGS, LIVE_HOP_MS, StreamSettings

    base = StreamSettings()
    used = {}
    for f in dataclass_fields(StreamSettings):
        if f.name not in fields:
            continue
        flag, (parse, text) = "--" + f.name.replace("_", "-"), STREAM_FLAGS[f.name]
        default = used[f.name] = (defaults or {}).get(f.name, getattr(base, f.name))
        if f.name == "hop_ms" and live:  # not given: live commands keep up, others take the library's
            text += (f", or auto: the smallest hop this machine holds in real time (measured at start-up); "
                     f"default {LIVE_HOP_MS} for serve and stream --realtime, else {default}")
            default = used[f.name] = None
        if f.name == "encoding":
            p.add_argument(flag, choices=ENCODINGS, default=None, help=f"{note}{text} (default {default})")
            used[f.name] = None
        elif f.name == "ramp":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{note}{text} (default {'on' if default else 'off'})")
        else:
            p.add_argument(flag, type=parse(live), default=default, help=note + text)
    return used


def stream_settings(args, **fields):
    """The stream options as a StreamSettings (`fields`: settings that are not options here,
    such as serve's --max-audio-s as the cache length), errors in the flags' own words."""
    import re

    from ..streaming.settings import LIVE_HOP_MS, StreamSettings

    options = {name: getattr(args, name) for name in STREAM_FLAGS if name in args and name != "encoding"}
    if options["hop_ms"] is None:  # not given: live commands keep up, others take the library's default
        options["hop_ms"] = LIVE_HOP_MS if is_live(args) else StreamSettings.hop_ms
    if "encoding" in args:  # every live command but stream-eval (it reports every encoding)
        backend = named_backend(args)
        encoding = args.encoding or backend.default_encoding(StreamSettings.encoding)
        backend.verify(encoding=encoding, flags=True)
        options["encoding"] = encoding
    try:
        return StreamSettings(**options, **fields)
    except InvalidInput as e:
        message = re.sub(r"\b(" + "|".join(options) + r")\b", lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        raise InvalidInput(message) from None


def is_live(args) -> bool:
    """The command serves live audio (serve, stream --realtime): its frames must keep up."""
    return args.command == "serve" or bool(getattr(args, "realtime", False))


def live_budget(animator, args, settings, streams: int):
    """What this machine holds at a live command's settings, measured now -> (the animator to
    run, its Budget): --hop-ms auto picks the hop, --encoders auto the encoders (each installed
    backend that runs the settings with the model's arithmetic or within its measured tolerance,
    measured beside the model's own; the best kept). Each measurement is said on stderr, and the choice."""
    from ..backends.registry import AUTO, auto_candidates
    from ..streaming.budget import choose_backend

    candidates = [animator]
    if args.encoders == AUTO and is_live(args):
        for backend in auto_candidates(animator.device, animator.dtype, settings.encoding):
            if backend.name != animator.encoder_backend.name:
                backend.cache_dir = getattr(args, "cache_dir", None)
                candidates.append(animator.with_encoders(backend))
    several = len(candidates) > 1

    def report(backend, b):
        who = f"{backend.name} encoders, " if several else ""
        hop = "--hop-ms auto: " if settings.is_auto else ""
        print(f"emotalk-fast {args.command}: {hop}{who}{b.describe(streams)}", file=sys.stderr, flush=True)

    backend, budget = choose_backend(animator.device, animator.dtype, settings, streams,
                                     [(a.encoder_backend, a.model) for a in candidates], report)
    if several:
        print(f"emotalk-fast {args.command}: --encoders auto chose {backend.name} (hop {budget.hop_ms} ms, "
              f"{1000 * budget.seconds(streams):.0f} ms per hop of {streams} stream{'s' if streams != 1 else ''}; "
              f"measured {', '.join(a.encoder_backend.name for a in candidates)})", file=sys.stderr, flush=True)
    return next(a for a in candidates if a.encoder_backend is backend), budget


def resolve_stream_settings(animator, args, streams: int = 1, **fields):
    """The stream options with --hop-ms auto measured now for `streams` live streams (each hop
    tried said on stderr)."""
    def report(b):
        print(f"emotalk-fast {args.command}: --hop-ms auto: {b.describe(streams)}", file=sys.stderr, flush=True)

    return animator.stream_settings(stream_settings(args, **fields), streams=streams, report=report)


def grid_ms_arg(flag: str, allow_zero: bool = True, allow_auto: bool = False):
    """An argparse type: milliseconds on the 100 ms grid (`auto` too where allowed), checked by
    the rule StreamSettings applies, in the flag's words."""
    from ..streaming.settings import AUTO, check_grid_ms

    def parse(text: str):
        if allow_auto and text == AUTO:
            return text
        try:
            return check_grid_ms(int(text), flag, allow_zero=allow_zero)
        except ValueError as e:
            expected = "an integer number of ms" + (" or auto" if allow_auto else "")
            raise argparse.ArgumentTypeError(str(e) if isinstance(e, InvalidInput) else
                                             f"expected {expected}, got {text!r}") from None

    parse.__name__ = "milliseconds"
    return parse


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming --help, not argparse's usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser_with(formatter):
    class Parser(OneLineParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", formatter)
            super().__init__(*args, **kwargs)

    return Parser
