"""serve's start-up as the small functions it is made of: each is called here on parsed options,
and none changes them."""
import copy
import warnings

import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.backends.registry import auto_candidates
from emotalk_fast.cli import build_parser
from emotalk_fast.cli.options import stream_settings
from emotalk_fast.cli.serve import check_serve_options, measure_budget, serve_threads, startup_line, threads_note
from emotalk_fast.serve import server as server_module
from emotalk_fast.streaming.settings import StreamSettings


def _args(*extra):
    return build_parser().parse_args(["serve", "--random-weights", "tiny", *extra])


def test_options_are_checked_and_left_as_parsed():
    args = _args("--max-streams", "3", "--hop-ms", "200")
    before = copy.deepcopy(vars(args))
    settings = check_serve_options(server_module, args)
    assert settings.port == 52000 and settings.host == "127.0.0.1"
    assert stream_settings(args, max_cache_s=args.max_audio_s) == StreamSettings(hop_ms=200, max_cache_s=600.0)
    assert serve_threads(_args("--threads", "3")) == 3
    assert serve_threads(args) == max(1, torch.get_num_threads() - 1)  # a CPU: one core left to the network
    assert vars(args) == before
    with pytest.raises(ValueError, match="--max-streams must be >= 1"):
        check_serve_options(server_module, _args("--max-streams", "0"))
    with pytest.raises(FileNotFoundError, match="nope.pem"):
        check_serve_options(server_module, _args("--tls-cert", "nope.pem", "--tls-key", "nope.pem"))


def test_the_budget_and_the_startup_line(capsys):
    args = _args("--max-streams", "2", "--hop-ms", "400", "--context-ms", "1000", "--encoding", "windowed",
                 "--encoders", "torch")
    animator = Animator.from_config("tiny", device="cpu", warn_random=False)
    served, budget = measure_budget(animator, args, stream_settings(args))
    assert served is animator  # the model's own encoders, as asked
    assert budget.settings.hop_ms == 400 and budget.seconds(1) > 0
    assert "a hop of 400 ms takes" in capsys.readouterr().err
    engine = animator.engine(args.max_streams, budget.settings)

    class Listening:
        address = "127.0.0.1:52000"

    line = startup_line(args, Listening(), engine, 1.25, budget)
    held = budget.holds()
    assert line.startswith("serving Audio2Face-3D ProcessAudioStream on 127.0.0.1:52000 (no TLS; up to 2 streams; "
                           "windowed encoding, hop 400 ms, lookahead 200 ms, context 1000 ms; emotion context 1000 ms "
                           f"every 400 ms; holds {held} live stream{'s' if held != 1 else ''} in real time; "
                           "ramp from 100 ms; ")
    assert line.endswith("torch encoders; " + threads_note(engine.device, engine.encoders) + "loaded in 1.2 s)")


@pytest.mark.parametrize("machine, per_hop, hop_ms", [
    ("fast", lambda hop_ms, n: 0.05 * n, 100),  # 50 ms a hop: 100 ms hops hold one stream
    ("slow", lambda hop_ms, n: n * (0.3 + 0.0002 * hop_ms), 500),  # 300 ms + 0.2 ms per ms of hop
    ("too slow", lambda hop_ms, n: 5.0 * n, 3200),  # none holds: the longest, with a warning
])
def test_serve_and_stream_realtime_choose_a_hop_that_keeps_up(monkeypatch, capsys, machine, per_hop, hop_ms):
    """Given no hop, encoding or dtype, serve and stream --realtime choose incremental encoding in
    float32 and the smallest hop this machine holds one live stream at (the machine stood in for
    by a hop cost); stream without --realtime keeps the library's 100 ms."""
    from emotalk_fast.cli.options import resolve_stream_settings
    from emotalk_fast.streaming import budget as budget_module
    from emotalk_fast.streaming.budget import Budget

    def measure(model, device, dtype, settings, streams, encoders=None):
        return Budget(settings, {n: per_hop(settings.hop_ms, n) for n in sorted({1, streams})})

    monkeypatch.setattr(budget_module, "measure", measure)
    animator = Animator.from_config("tiny", device="cpu", warn_random=False)
    args = _args()
    several = len(auto_candidates("cpu", torch.float32, "incremental")) > 1  # --encoders auto measures them all
    settings = stream_settings(args)
    assert settings.is_auto and settings.incremental and args.live_streams == 1 and args.dtype is None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        animator, budget = measure_budget(animator, args, settings)
    assert budget.hop_ms == hop_ms and budget.settings.incremental
    assert f"--hop-ms auto: {animator.encoder_backend.name + ' encoders, ' if several else ''}a hop of {hop_ms} ms " \
           "takes" in capsys.readouterr().err
    warned = [str(w.message) for w in said if "keeps up with" in str(w.message)]
    assert warned == (["this machine keeps up with 0 of --live-streams 1 at hop 3200 ms: more fall behind real "
                       "time (try a shorter --context-ms, fewer streams, or a faster device)"]
                      if machine == "too slow" else [])
    engine = animator.engine(args.max_streams, budget.settings)

    class Listening:
        address = "127.0.0.1:52000"

    line = startup_line(args, Listening(), engine, 1.0, budget)
    assert f"incremental encoding, hop {hop_ms} ms (auto)" in line
    assert f"holds {budget.holds()} live stream" in line and ("holds 0" in line) == (machine == "too slow")

    parse = build_parser().parse_args
    live = parse(["stream", "speech.wav", "--random-weights", "tiny", "--realtime"])
    assert resolve_stream_settings(animator, live).hop_ms == hop_ms
    assert resolve_stream_settings(animator, parse(["stream", "speech.wav", "--random-weights", "tiny"])).hop_ms == 100
    with pytest.raises(ValueError, match="--live-streams must be between 1 and --max-streams"):
        check_serve_options(server_module, _args("--live-streams", "3", "--max-streams", "2"))


def test_encoders_auto_takes_the_backend_that_holds_the_shortest_hop(monkeypatch, capsys):
    """serve's default --encoders auto measures each installed backend that runs the settings
    with the model's arithmetic or within its tolerance (here ONNX Runtime stood in for as twice
    as fast as PyTorch, int8 between) and serves the best; a choice the user made (--encoders
    torch) is kept as given."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from emotalk_fast.streaming import budget as budget_module
    from emotalk_fast.streaming.budget import HEADROOM, Budget

    def measure(model, device, dtype, settings, streams, encoders=None):
        cost = {"onnx": 0.25, "int8": 0.4}.get(encoders.name, 0.5)  # seconds of a hop, any hop
        return Budget(settings, {n: cost * n for n in sorted({1, streams})})

    monkeypatch.setattr(budget_module, "measure", measure)
    animator = Animator.from_config("tiny", device="cpu", warn_random=False)
    args = _args()
    assert args.encoders == "auto"
    fast, slow = (next(h for h in range(100, 3300, 100) if cost <= HEADROOM * h / 1000) for cost in (0.25, 0.5))
    served, budget = measure_budget(animator, args, stream_settings(args))
    err = capsys.readouterr().err
    assert served.encoder_backend.name == "onnx" and served.model is animator.model and budget.hop_ms == fast < slow
    # (and any backend a test registered beside them)
    assert f"--encoders auto chose onnx (hop {fast} ms, 250 ms per hop of 1 stream; measured torch, int8, onnx" in err
    assert f"onnx encoders, a hop of {fast} ms takes 250 ms" in err and f"torch encoders, a hop of {slow} ms" in err
    served, budget = measure_budget(animator, _args("--encoders", "torch"), stream_settings(args))
    assert served is animator and budget.hop_ms == slow and "--encoders auto" not in capsys.readouterr().err


def test_encoders_auto_takes_int8_where_it_holds_the_shortest_hop(monkeypatch, capsys):
    """int8 is within its measured tolerance: auto measures it beside the float model and serves
    it where it holds the shortest hop, in a view of the model; the float model is left as it is."""
    from emotalk_fast.runtime.int8 import Int8Linear
    from emotalk_fast.streaming import budget as budget_module
    from emotalk_fast.streaming.budget import Budget

    measured = []

    def measure(model, device, dtype, settings, streams, encoders=None):
        measured.append((encoders.name, any(isinstance(m, Int8Linear) for m in model.modules())))
        cost = 0.1 if encoders.name == "int8" else 0.5
        return Budget(settings, {n: cost * n for n in sorted({1, streams})})

    monkeypatch.setattr(budget_module, "measure", measure)
    animator = Animator.from_config("tiny", device="cpu", warn_random=False)
    args = _args("--hop-ms", "auto")
    served, budget = measure_budget(animator, args, stream_settings(args))
    assert served.encoder_backend.name == "int8" and budget.hop_ms == 200
    assert ("int8", True) in measured and ("torch", False) in measured  # each measured with its own model
    assert any(isinstance(m, Int8Linear) for m in served.model.modules())
    assert not any(isinstance(m, Int8Linear) for m in animator.model.modules())
    assert "--encoders auto chose int8 (hop 200 ms" in capsys.readouterr().err
