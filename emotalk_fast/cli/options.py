"""What the commands share: the model and stream options, a public model loader, argument
parsers for styles, and how progress and warnings are printed. Only argparse is imported here;
each helper imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import sys

from ..model.config import BACKENDS, ENCODERS
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


def load_animator(args):
    from ..animator import Animator

    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInput(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.encoders != "torch" and (args.dtype not in (None, "float32", "fp32") or args.device not in ("auto", "cpu")):
        raise InvalidInput(f"--encoders {args.encoders} runs on the CPU in float32: drop --dtype and --device")
    if args.encoders != "torch":
        args.device = "cpu"
    if args.random_weights is not None:  # asked for by name, and said out loud
        print(f"emotalk-fast {args.command}: RANDOM weights ({args.random_weights} preset): the output means "
              "nothing (for tests and benchmarks)", file=sys.stderr, flush=True)
        animator = Animator.from_config(args.random_weights, device=args.device, dtype=args.dtype,
                                        backend=args.backend, encoders=args.encoders)
    else:
        animator = Animator.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype,
                                            backend=args.backend, encoders=args.encoders)
    if isinstance(args.dtype, str) and args.dtype.lower() == "auto":
        from ..runtime.device import cpu_description

        where = f"CPU {cpu_description()}" if animator.device.type == "cpu" else str(animator.device)
        print(f"emotalk-fast {args.command}: --dtype auto chose {str(animator.dtype).replace('torch.', '')} "
              f"({where})", file=sys.stderr, flush=True)
    return animator


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
                                                 "native here: bfloat16 on GPUs and on CPUs with AVX512-BF16 or AMX, "
                                                 "else float32), bfloat16 or float16 (GPU)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="decoder kernels: auto (Triton on CUDA, PyTorch on CPU), torch or triton (default auto)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model: a checkpoint, or random weights asked for by name (never by accident); and
    where it runs."""
    from ..model.config import PRESETS

    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="EmoTalk.pth or a converted directory")
    model.add_argument("--random-weights", metavar="PRESET", choices=sorted(PRESETS),
                       help=f"random weights of this size instead ({', '.join(sorted(PRESETS))}): the output "
                            "means nothing (tests and benchmarks)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core; serve: one core fewer, left to "
                        "its network and audio threads). On a machine shared with other busy processes fewer "
                        "threads hold steady where one per core can run 2-3x slower")
    add_encoders_option(p)
    add_runtime_options(p)


def add_encoders_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoders", choices=ENCODERS, default="torch",
                   help="how the two wav2vec2 encoders run: torch (default); int8: their transformer layers as "
                        "int8 GEMMs on the CPU, about twice as fast there, and the output moves; openvino: compiled "
                        "by OpenVINO for the CPU, the same float32 arithmetic, faster on a stream's short windows "
                        "(pip install \"emotalk-fast[openvino]\"; see docs/performance.md)")


def add_stream_options(p: argparse.ArgumentParser) -> None:
    """--hop-ms, --lookahead-ms, --context-ms, --emotion-context-ms, --emotion-hop-ms,
    --whole-utterance-ms, --ramp: a stream's windows (stream, serve)."""
    from ..streaming.engine import RAMP, WHOLE_UTTERANCE_MS

    p.add_argument("--hop-ms", type=hop_ms_arg, default=100,
                   help="multiple of 100 (default 100), or auto: the smallest hop this machine holds in real time "
                        "(measured at start-up)")
    p.add_argument("--lookahead-ms", type=int, default=200, help="multiple of 100 (default 200)")
    p.add_argument("--context-ms", type=int, default=2000, help="multiple of 100 (default 2000)")
    p.add_argument("--emotion-context-ms", type=int, default=None,
                   help="the emotion branch's context, multiple of 100 (default: --context-ms)")
    p.add_argument("--emotion-hop-ms", type=int, default=None,
                   help="how often the emotion branch runs: a multiple of the hop up to hop + lookahead (default: "
                        "the largest, every third 100 ms hop at the defaults; the hop itself runs it every hop)")
    p.add_argument("--whole-utterance-ms", type=int, default=WHOLE_UTTERANCE_MS,
                   help=f"an utterance up to this long gets offline's emotion label, exactly, when it ends (default "
                        f"{WHOLE_UTTERANCE_MS}; 0: never)")
    p.add_argument("--ramp", action=argparse.BooleanOptionalAction, default=RAMP,
                   help="hops of 100, 200, 400, ... ms first, doubling up to --hop-ms: the first frames wait for "
                        f"100 ms of audio, not a whole hop (default {'on' if RAMP else 'off'})")


def stream_settings(args) -> dict:
    """The stream's windows (the options but the hop, --whole-utterance-ms and --ramp), as
    keyword arguments of Animator.stream / engine and of the budget."""
    return {"lookahead_ms": args.lookahead_ms, "context_ms": args.context_ms,
            "emotion_context_ms": args.emotion_context_ms, "emotion_hop_ms": args.emotion_hop_ms}


def resolve_hop_ms(animator, args, streams: int = 1) -> int:
    """--hop-ms, with auto measured now for `streams` live streams."""
    return args.hop_ms if args.hop_ms != "auto" else auto_hop_budget(animator, args, streams).hop_ms


def auto_hop_budget(animator, args, streams: int):
    """--hop-ms auto: the smallest hop that holds `streams` streams here (budget.choose_hop),
    each hop tried said on stderr."""
    from ..streaming.budget import choose_hop

    def report(b):
        print(f"emotalk-fast {args.command}: --hop-ms auto: {b.describe(streams)}", file=sys.stderr, flush=True)

    return choose_hop(animator.model, animator.device, animator.dtype, **stream_settings(args), streams=streams,
                      report=report)


def hop_ms_arg(text: str):
    """--hop-ms: 'auto' or an integer (the engine checks it is a multiple of 100)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer number of ms or auto, got {text!r}") from None


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parser_with(formatter):
    class Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("formatter_class", formatter)
            super().__init__(*args, **kwargs)

    return Parser
