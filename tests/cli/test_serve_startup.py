"""serve's start-up as the small functions it is made of: each is called here on parsed options,
and none changes them."""
import copy

import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.cli import build_parser
from emotalk_fast.cli.options import stream_settings
from emotalk_fast.cli.serve import check_serve_options, measure_budget, serve_threads, startup_line
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
    args = _args("--max-streams", "2", "--hop-ms", "400", "--context-ms", "1000")
    animator = Animator.from_config("tiny", device="cpu", warn_random=False)
    budget = measure_budget(animator, args, stream_settings(args))
    assert budget.settings.hop_ms == 400 and budget.seconds(1) > 0
    assert "a hop of 400 ms takes" in capsys.readouterr().err
    engine = animator.engine(args.max_streams, budget.settings)

    class Listening:
        address = "127.0.0.1:52000"

    line = startup_line(args, Listening(), engine, 1.25)
    assert line.startswith("serving Audio2Face-3D ProcessAudioStream on 127.0.0.1:52000 (no TLS; up to 2 streams; "
                           "hop 400 ms, lookahead 200 ms, context 1000 ms, emotion context 1000 ms every 400 ms; "
                           "ramp from 100 ms; ")
    assert line.endswith("loaded in 1.2 s)")
