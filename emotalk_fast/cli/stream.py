"""The live commands: stream (a file in hops, optionally to Live Link / VMC), stream-eval, bench."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..model.config import SAMPLE_RATE
from .options import LIVE_STREAM_FIELDS, add_encoders_option, add_model_options, add_threads_option, add_runtime_options, add_stream_options, load_animator, \
    live_budget, model_config, ms_list, parse_level, parse_person, resolve_stream_settings, stream_settings


def stream(args) -> None:
    import numpy as np

    from ..animator import min_samples
    from .serve import serve_threads, threads_note
    from ..io.audio import prepare_audio
    from ..bridges.live import describe, make_targets, stream_live
    from ..streaming.stream import first_frame_latency_s, play

    from ..model.style import check_style
    from ..io.curves import check_output

    targets = make_targets(args.livelink, args.vmc, args.subject, args.vmc_names)  # live targets, checked first
    if args.output:
        check_output(args.output)
    config = model_config(args)
    check_style(config, args.level, args.person)
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"audio file not found: {args.input}")
    asked = stream_settings(args)  # its errors, and the audio's, before the model loads
    samples = prepare_audio(args.input, min_samples=min_samples(config))
    animator = load_animator(args, threads=serve_threads(args))  # a live stream, threaded as serve is
    settings, budget = asked, None
    if settings.is_auto or args.realtime:  # measured now: the hop, the encoders, this machine's latency
        animator, budget = live_budget(animator, args, settings, 1)  # (its hops also warm the kernels up)
        settings = budget.settings
    stream = animator.stream(args.level, args.person, settings)
    hop_ms = stream.settings.hop_ms
    auto = " (auto)" if asked.is_auto else ""
    print(f"streaming {len(samples) / SAMPLE_RATE:.2f} s in {hop_ms} ms hops{auto}"
          f"{' in real time' if args.realtime else ''}, {stream.settings.encoding} encoding; algorithmic latency "
          f"{stream.latency_ms:.0f} ms{_with_compute(budget)}; "
          f"{threads_note(animator.device, animator.encoder_backend).rstrip('; ')}")
    hop_s, algo_s, computes, done = hop_ms / 1000, stream.latency_ms / 1000, [], [0]

    def on_hop(i, frames, compute_s, wall_s):
        computes.append(compute_s)
        if len(frames):
            latency = first_frame_latency_s(done[0], compute_s, wall_s, algo_s, args.realtime)
            print(f"hop {i:4d}: +{len(frames)} frames (to {done[0] + len(frames)}), compute {1000 * compute_s:6.1f} ms, "
                  f"first-frame latency {1000 * latency:6.0f} ms")
            done[0] += len(frames)

    if targets:  # --livelink / --vmc: paced at 30 fps on the audio clock
        frames, stats = stream_live(stream, samples, targets, realtime=args.realtime, on_hop=on_hop)
        for t in targets:
            t.close()
    else:
        frames = play(stream, samples, int(hop_s * SAMPLE_RATE), realtime=args.realtime, on_hop=on_hop)
    rtf = sum(computes) / (len(samples) / SAMPLE_RATE)
    print(f"{len(frames)} frames; compute per hop median {1000 * float(np.median(computes)):.1f} ms, "
          f"max {1000 * max(computes):.1f} ms (real time needs < {hop_ms} ms); real-time factor {rtf:.2f} "
          f"(compute / audio: {verdict(rtf, args.realtime)})")
    if targets:
        print(describe(stats))
    if args.output:
        from ..animator import Animation

        anim = Animation(frames, stream.emotion_logits, animator.config.emotion_labels)
        if args.random_weights is not None:
            anim.metadata["random_weights"] = args.random_weights
        anim.metadata["stream_settings"] = stream.settings.as_dict()  # what the frames depend on
        path = anim.save(args.output, clamp=args.clamp)
        print(f"wrote {path}")


def stream_eval(args) -> None:
    from ..tools.measure import generated_speech
    from ..streaming.settings import ENCODINGS
    from ..tools.stream_eval import evaluate, markdown_table

    contexts, lookaheads = ms_list("--contexts", args.contexts), ms_list("--lookaheads", args.lookaheads)
    stream_settings(args)  # its errors before the model loads
    animator = load_animator(args)
    speech = generated_speech(args.seconds)

    def report(done, total, setting):
        print(f"[stream-eval] [{done + 1}/{total}] {setting}", file=sys.stderr, flush=True)

    encodings = tuple(e for e in ENCODINGS if e in animator.encoder_backend.capabilities.encodings)
    rows = evaluate(animator, speech, contexts, lookaheads, resolve_stream_settings(animator, args), progress=report,
                    encodings=encodings)
    print(markdown_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=2))


def bench(args) -> None:
    from ..tools.bench import format_bench, run_bench

    def report(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    result = run_bench(seconds=args.seconds, device=args.device, dtype=args.dtype, preset=args.preset,
                       repeats=args.repeats, threads=args.threads, skip_startup=args.skip_startup,
                       encoders=args.encoders, progress=report)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


def register(sub) -> None:
    """Add stream, stream-eval and bench to the main CLI's subparsers."""
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
    add_model_options(s_, live=True)
    add_stream_options(s_)
    s_.set_defaults(func=stream)

    e = sub.add_parser("stream-eval", help="streaming vs offline, windowed and incremental encoding side by side: "
                                           "deviation, latency, compute per hop")
    e.add_argument("--seconds", type=float, default=8.0, help="length of the generated speech")
    e.add_argument("--contexts", default="1000,2000,4000",
                   help="context settings to compare, in ms, comma-separated (multiples of 100; each in place of "
                        "--context-ms)")
    e.add_argument("--lookaheads", default="100,200,400",
                   help="lookahead settings to compare, in ms, comma-separated (multiples of 100; each in place of "
                        "--lookahead-ms)")
    e.add_argument("--json", help="also write the rows as JSON here")
    add_model_options(e)
    # it reports every encoding, side by side
    add_stream_options(e, fields=tuple(f for f in LIVE_STREAM_FIELDS if f != "encoding"))
    e.set_defaults(func=stream_eval)

    b = sub.add_parser("bench", help="time the release-size model on random weights (no download)")
    b.add_argument("--seconds", type=float, default=10.0, help="length of the generated speech")
    add_runtime_options(b)
    b.add_argument("--preset", default="emotalk", help="model size: emotalk (release), mini, tiny")
    b.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    add_threads_option(b)
    b.add_argument("--skip-startup", action="store_true", help="do not time start-up (it writes a checkpoint "
                                                              "of the model's size to a temporary directory)")
    add_encoders_option(b)
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=bench)


def _with_compute(budget) -> str:
    """The latency a frame has on this machine, where its hop was measured."""
    if budget is None:
        return ""
    return f", {budget.latency_ms(1):.0f} ms with this machine's compute"


def verdict(real_time_factor: float, realtime: bool) -> str:
    """Whether a stream kept up, and what to do where it did not."""
    if real_time_factor < 1:
        return "keeps up"
    fix = "a longer --hop-ms" if realtime else "--realtime --hop-ms auto picks the shortest hop this machine keeps up at"
    return f"falls behind: {fix}"
