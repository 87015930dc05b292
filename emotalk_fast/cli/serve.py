"""The service's commands: serve, send and health.

Only argparse is imported here; grpc and the model load when a command runs, so the CLI works
(and says what to install) without the [serve] extra.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import InvalidInput, install_hint
from ..io.curves import check_output
from .options import add_model_options, add_stream_options, live_budget, load_animator, run_device, stream_settings, \
    parse_person, warn


def _import_serve(module: str):
    """emotalk_fast.serve.* or emotalk_fast.client, with the install hint when grpc is missing.
    gRPC's C core logs its own line for what the commands then say in one line of their own (a
    port in use): quiet unless the user set GRPC_VERBOSITY (read when grpc is imported)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        return importlib.import_module(f"emotalk_fast.{module}")
    except ImportError as e:
        raise InvalidInput(f"the service needs the serve extra ({e.name} is missing): "
                           f"{install_hint('serve')}") from None


def serve(args) -> None:
    """Check every option, listen, load, measure, build the engine, report; then serve until a
    signal. Each step is a function of its own (tests call them)."""
    server_module = _import_serve("serve.server")
    serve_settings = check_serve_options(server_module, args)  # all before the model loads
    settings = stream_settings(args, max_cache_s=args.max_audio_s)
    # one line on stderr per stream that did not end in SUCCESS, and per engine fault
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    # listen first: a port in use fails now, not after the model loads; health says NOT_SERVING meanwhile
    server = server_module.A2FServer(None, serve_settings).start()
    try:
        animator = load_animator(args, threads=serve_threads(args))
        animator, budget = measure_budget(animator, args, settings)
        engine = animator.engine(args.max_streams, budget.settings, cuda_graphs=args.cuda_graphs)
        server.attach(engine)
    except BaseException:
        server.stop(grace=0)
        raise
    print(startup_line(args, server, engine, time.perf_counter() - t0, budget), flush=True)
    server.wait_for_signal()
    if server.streams_cut:
        print(f"stopped at once by a second signal: {server.streams_cut} live stream(s) cut", flush=True)
        raise SystemExit(1)
    print("stopped", flush=True)


def check_serve_options(server_module, args):
    """The service's own options -> its ServeSettings, or the first error, in the flags' words."""
    settings = server_module.ServeSettings(
        host=args.host, port=args.port, max_audio_s=args.max_audio_s, idle_timeout_s=args.idle_timeout,
        shutdown_grace_s=args.shutdown_grace, tls_cert=args.tls_cert, tls_key=args.tls_key,
        client_ca=args.client_ca, metrics_port=args.metrics_port, max_streams=args.max_streams,
        live_streams=args.live_streams)
    for path in (args.tls_cert, args.tls_key, args.client_ca):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"file not found: {path}")
    return settings


def serve_threads(args) -> int | None:
    """--threads, else on a CPU one core fewer than torch's default (runtime.threads.serve_threads):
    on 2 cores beside a live client, 2 threads served no faster than 1 (docs/performance.md).
    None (torch's choice) on a GPU."""
    from ..runtime.threads import serve_threads as cpu_threads

    if args.threads is not None:
        return args.threads
    if run_device(args).type != "cpu":
        return None
    return cpu_threads()


def startup_line(args, server, engine, load_s: float, budget=None) -> str:
    """What the server listens on, its settings and (given the measured budget) what they hold,
    in one line."""
    s, animator_device = engine.settings, engine.device
    tls = "mutual TLS" if args.client_ca else "TLS" if args.tls_cert else "no TLS"
    metrics = f", metrics on http://{args.host}:{args.metrics_port}/metrics" if args.metrics_port is not None else ""
    graphs = ""
    if args.cuda_graphs:
        graphs = "static shapes and CUDA graphs; " if animator_device.type == "cuda" else \
            "static shapes (eager: CUDA graphs need CUDA); "
    held = ""
    if budget is not None:
        n = budget.holds()
        held = f"holds {n} live stream{'s' if n != 1 else ''} in real time; "
    emotion = "" if s.incremental and s.emotion_context == s.context_ms else \
        f"emotion context {s.emotion_context} ms every {s.emotion_hop} ms; "
    auto = " (auto)" if args.hop_ms in (None, "auto") else ""
    return (f"serving Audio2Face-3D ProcessAudioStream on {server.address} ({tls}; up to {args.max_streams} "
            f"stream{'s' if args.max_streams != 1 else ''}; {s.encoding} encoding, hop {s.hop_ms} ms{auto}, "
            f"lookahead {s.lookahead_ms} ms, context {s.context_ms} ms; {emotion}{held}"
            f"{'ramp from 100 ms; ' if s.ramp and s.hop_ms > 100 else ''}{graphs}"
            f"{engine.encoders.name} encoders; {threads_note(animator_device, engine.encoders)}"
            f"loaded in {load_s:.1f} s{metrics})")


def threads_note(device, encoders) -> str:
    """The threads that compute a hop (torch's, and the encoder backend's), in words ("" on a GPU)."""
    import torch

    from ..runtime.threads import branches_run_at_once

    if device.type != "cpu":
        return ""
    n = torch.get_num_threads()
    own = encoders.threads_note()
    if own:
        return f"{n} torch thread{'s' if n != 1 else ''}, {own}; "
    at_once = ", each encoder on its own, both at once" if branches_run_at_once(device) else ""
    return f"{n} torch thread{'s' if n != 1 else ''}{at_once}; "


def measure_budget(animator, args, settings):
    """What this machine holds at the serve's settings (measured now), said on stderr, with a
    warning when it cannot keep up with --live-streams; --hop-ms auto picks the hop, --encoders
    auto the encoders -> (the animator to serve, its Budget)."""
    streams = args.live_streams
    animator, budget = live_budget(animator, args, settings, streams)
    held = budget.holds()
    if held < streams:
        hint = "--hop-ms auto, a shorter --context-ms, " if not settings.is_auto else "a shorter --context-ms, "
        warn(f"this machine keeps up with {held} of --live-streams {streams} at hop {budget.hop_ms} ms: "
             f"more fall behind real time (try {hint}fewer streams, or a faster device)")
    return animator, budget


def _tls_args(args) -> dict:
    return {"root_cert": args.root_cert, "client_cert": args.client_cert, "client_key": args.client_key}


def send(args) -> None:
    client = _import_serve("client")
    # the arguments first, in the flags' own words, before anything connects
    if args.level is not None and not 0.0 <= args.level <= 1.0:
        raise InvalidInput(f"--level must be in [0, 1], got {args.level:g}")
    person, weights = args.person, None
    if isinstance(person, dict):  # a mix, as animate and stream take it: EmoTalk's persons, checked here
        from ..model.config import EmoTalkConfig
        from ..model.style import person_weights

        person, weights = None, person_weights(EmoTalkConfig.from_name("emotalk"), args.person)
    elif person is not None and person < 0:
        raise InvalidInput(f"--person must be >= 0 (the server says how many it has), got {person}")
    if not args.chunk_s > 0:
        raise InvalidInput(f"--chunk-s must be > 0, got {args.chunk_s:g}")
    if args.input != "-" and not Path(args.input).is_file():
        raise FileNotFoundError(f"audio file not found: {args.input}")
    out = Path(args.output) if args.output else None
    if out is not None:
        check_output(out)  # before any audio is sent
    try:
        result = client.send(args.input, server=args.server, level=args.level, person=person, person_weights=weights,
                             clamp=args.clamp or None, chunk_s=args.chunk_s, realtime=args.realtime,
                             timeout=args.timeout, **_tls_args(args))
    except client.ServerError as e:  # the server's own words, on one line
        if e.code == "UNAVAILABLE" and client.health_status(args.server, timeout=2.0, **_tls_args(args)) is None:
            print(f"no server at {client.server_address(args.server)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise InvalidInput(f"{args.server}: {e}") from None
    first = f", first reply after {1000 * result.first_reply_s:.0f} ms" if result.first_reply_s is not None else ""
    print(f"{result.num_frames} frames in {result.messages} messages from {args.server}{first}")
    if out is not None:
        print(f"wrote {result.save(out)}")


def health(args) -> None:
    client = _import_serve("client")
    if args.wait is not None and not args.wait >= 0:
        raise InvalidInput(f"--wait must be >= 0 seconds, got {args.wait:g}")
    deadline = time.monotonic() + (args.wait or 0.0)
    while True:  # with --wait: until SERVING, or the time is up
        status = client.health_status(args.server, timeout=args.timeout or 5.0, **_tls_args(args))
        if status == "SERVING" or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if status is None:
        print(f"no server at {client.server_address(args.server)}")
        raise SystemExit(2)
    print(f"{args.server} is {status}")
    if status != "SERVING":
        raise SystemExit(1)


def register(sub) -> None:
    """Add serve, send and health to the main CLI's subparsers."""
    from ..serve.settings import ServeSettings

    d = ServeSettings()
    v = sub.add_parser("serve", help="serve the Audio2Face-3D gRPC API (ProcessAudioStream, health)")
    v.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: this "
                                                  "machine only; 0.0.0.0 for every interface)")
    v.add_argument("--port", type=int, default=d.port, help=f"gRPC port (default {d.port}, as Audio2Face-3D)")
    v.add_argument("--max-streams", type=int, default=d.max_streams,
                   help=f"concurrent streams; more get RESOURCE_EXHAUSTED (default {d.max_streams})")
    v.add_argument("--live-streams", type=int, default=d.live_streams,
                   help=f"live streams that must keep up in real time (default {d.live_streams}, at most "
                        "--max-streams): --hop-ms auto, the default, picks the smallest hop that holds them; a hop "
                        "given that does not hold them gets a warning at start-up")
    v.add_argument("--max-audio-s", type=float, default=d.max_audio_s,
                   help=f"longest stream in seconds of audio; longer ones get INVALID_ARGUMENT "
                        f"(default {d.max_audio_s:g})")
    v.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help="seconds a stream may send no audio before end_of_audio; then DEADLINE_EXCEEDED "
                        f"(default {d.idle_timeout_s:g})")
    v.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace_s,
                   help="on SIGTERM or Ctrl-C, seconds live streams get to finish while health says NOT_SERVING "
                        f"and new streams get UNAVAILABLE (default {d.shutdown_grace_s:g}); a second signal stops "
                        "at once (exit 1)")
    v.add_argument("--tls-cert", help="server certificate (PEM) for TLS")
    v.add_argument("--tls-key", help="its private key (PEM)")
    v.add_argument("--client-ca", help="CA (PEM) that client certificates must chain to: mutual TLS")
    v.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (same host)")
    v.add_argument("--cuda-graphs", action="store_true",
                   help="static shapes, each batch bucket's hop replayed as a CUDA graph (for CUDA; experimental: "
                        "not yet measured on a GPU). The decoder then reads the whole --max-audio-s cache each hop")
    add_model_options(v, live=True)
    add_stream_options(v)
    v.set_defaults(func=serve)

    def add_client_options(p_):
        p_.add_argument("--server", default=f"127.0.0.1:{d.port}",
                        help=f"HOST:PORT, or HOST for port {d.port} (default 127.0.0.1:{d.port})")
        p_.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
        p_.add_argument("--root-cert", help="CA (PEM) to trust: TLS")
        p_.add_argument("--client-cert", help="client certificate (PEM): mutual TLS")
        p_.add_argument("--client-key", help="client private key (PEM): mutual TLS")

    n = sub.add_parser("send", help="animate an audio file on a running server (Audio2Face-3D protocol)")
    n.add_argument("input", help="audio file (any rate; sent as 16-bit mono PCM)")
    n.add_argument("-o", "--output", help="write the frames (.csv, .npy or .json)")
    n.add_argument("--level", type=float, default=None, help="emotion level in [0, 1] (server default 1)")
    n.add_argument("--person", type=parse_person, default=None,
                   help="speaking style: an index 0..23, or a mix like 3:0.5,4:0.5 as animate and stream take it "
                        "(server default 0; the server checks an index against its model)")
    n.add_argument("--clamp", action="store_true", help="ask the server to clamp weights to [0, 1]")
    n.add_argument("--chunk-s", type=float, default=1.0, help="seconds of audio per message (default 1)")
    n.add_argument("--realtime", action="store_true", help="send audio no faster than it would be spoken")
    add_client_options(n)
    n.set_defaults(func=send)

    h = sub.add_parser("health", help="ask a server whether it is SERVING (exit 0), NOT_SERVING: starting or "
                                                "draining (exit 1), or not there at all (exit 2)")
    h.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="ask again until it is SERVING or SECONDS have passed (a server loading its model says "
                        "NOT_SERVING, or is not there yet); then exit as above")
    add_client_options(h)
    h.set_defaults(func=health)
