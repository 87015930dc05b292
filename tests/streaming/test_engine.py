"""The batched streaming engine: each stream's frames equal a stream alone with the same settings,
whatever shares its batch and whenever streams join, change style, flush or leave; one stream's
bad input never touches another; slots and the ring cache are reused, never grown."""
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from emotalk_fast import Animator
from emotalk_fast.io.audio import resample
from emotalk_fast.streaming.engine import EngineFull, StepFailed, StreamEngine
from emotalk_fast.streaming.executor import batch_buckets
from emotalk_fast.streaming.settings import StreamSettings
from emotalk_fast.model.emotalk import num_frames
from helpers import espeak_speech

TOL = 1e-5
SETTINGS = dict(hop_ms=100, lookahead_ms=200, context_ms=600, max_cache_s=3.0, encoding="windowed")
RAMP = dict(SETTINGS, hop_ms=400, ramp=True)  # hops of 100, 200, then 400
INCREMENTAL = dict(SETTINGS, encoding="incremental")
INCREMENTAL_RAMP = dict(RAMP, encoding="incremental", emotion_context_ms=900)


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=11, device="cpu")


@pytest.fixture(scope="module")
def voices():
    lines = ("The engine animates many faces at once.", "Every stream keeps its own style and pace.",
             "A third voice joins a little later on.", "This one speaks in tiny single samples.")
    return [espeak_speech(text, speed=190 + 10 * i) for i, text in enumerate(lines)]


# Each stream: (16 kHz speech, its rate, style, the step it joins at, chunk size at its rate,
# an optional (step, level, person, crossfade_ms) style change, the step it is closed at or None).
def _plans(voices):
    return [
        dict(speech=voices[0], rate=16000, level=1, person=0, join=0, chunk=1600, change=None, close=None),
        dict(speech=voices[1], rate=44100, level=0, person=7, join=3, chunk=2205,
             change=(12, 1, {2: 0.5, 9: 0.5}, 300), close=None),
        dict(speech=voices[2], rate=48000, level=0.4, person=13, join=6, chunk=7000, change=None, close=8),
        dict(speech=voices[3][:4000], rate=16000, level=1, person=23, join=1, chunk=1, change=None, close=None),
    ]


def _at_rate(speech, rate):
    return speech if rate == 16000 else resample(speech, 16000, rate)


def _solo(animator, plan, pushes, settings=SETTINGS):
    """What a stream alone gives for the same chunks (and the same style change after the same
    number of pushes)."""
    stream = animator.stream(level=plan["level"], person=plan["person"], sample_rate=plan["rate"], **settings)
    out = []
    for i, chunk in enumerate(pushes):
        if plan["change"] and i == plan["change"][0]:
            stream.set_style(*plan["change"][1:3], crossfade_ms=plan["change"][3])
        out.append(stream.push(chunk))
    if plan["close"] is None:
        out.append(stream.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("cuda_graphs, settings", [(False, SETTINGS), (True, SETTINGS), (False, RAMP),
                                                   (False, INCREMENTAL), (False, INCREMENTAL_RAMP),
                                                   (True, INCREMENTAL_RAMP)],
                         ids=["eager", "static-shapes", "ramp", "incremental", "incremental-ramp",
                              "incremental-static-shapes"])
def test_streams_in_one_engine_equal_streams_alone(animator, voices, cuda_graphs, settings):
    """cuda_graphs on the CPU: the static-shape path (windows padded to one length, batches to
    buckets, the whole ring read) runs eagerly; only the capture itself needs CUDA. With a ramp,
    streams at different hop lengths share a step."""
    plans = _plans(voices)
    engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**settings), max_streams=4, cuda_graphs=cuda_graphs)
    if cuda_graphs:  # built up front, in silence on the scratch slot: nothing any stream sees
        engine.prepare_static_hops()
        assert sorted(engine.executor.static_hops) == [1, 2, 4] and engine.executor.cache.k[:4].abs().sum() == 0  # only the scratch slot
        if engine.executor.encoder.keeps_rows:  # its rings too
            assert all(r.k[:4].abs().sum() == 0 for r in engine.executor.encoder.rings.values())
    audio = [_at_rate(p["speech"], p["rate"]) for p in plans]
    ids, pos, pushes = {}, [0] * 4, [[] for _ in plans]
    frames = [[] for _ in plans]
    batch_sizes = []
    for tick in range(400):
        for i, p in enumerate(plans):
            if tick == p["join"]:
                ids[i] = engine.open(p["level"], p["person"], p["rate"])
            if i not in ids or ids[i] not in engine.live:
                continue
            if p["close"] is not None and len(pushes[i]) == p["close"]:
                engine.close(ids[i])
                continue
            if pos[i] < len(audio[i]):
                if p["change"] and len(pushes[i]) == p["change"][0]:
                    engine.set_style(ids[i], *p["change"][1:3], crossfade_ms=p["change"][3])
                # a 1-sample pusher pushes many times per tick, like a fast producer
                for _ in range(200 if p["chunk"] == 1 else 1):
                    chunk = audio[i][pos[i] : pos[i] + p["chunk"]]
                    if not len(chunk):
                        break
                    engine.push(ids[i], chunk)
                    pushes[i].append(chunk)
                    pos[i] += len(chunk)
                if pos[i] >= len(audio[i]):
                    engine.flush(ids[i])
        while True:  # drain, as the stream API does after each push
            out = engine.step()
            if not out:
                break
            batch_sizes.append(len(out))
            for i, sid in ids.items():
                if sid in out:
                    frames[i].append(out[sid])
        if all(i in ids and (ids[i] not in engine.live or engine.finished(ids[i])) for i in range(4)):
            break
    assert max(batch_sizes) >= 3, "streams never shared a batch"
    if cuda_graphs:  # batches of 3 ran padded to the bucket of 4, single streams in the bucket of 1
        assert engine.executor.buckets == [1, 2, 4] and {1, 4} <= set(engine.executor.static_hops)
        assert all(h.graph is None for h in engine.executor.static_hops.values())  # no capture on the CPU
    assert pos[2] < len(audio[2]) and ids[2] not in engine.live  # closed mid-way
    for i, p in enumerate(plans):
        got = np.concatenate(frames[i])
        want = _solo(animator, p, pushes[i], settings)
        assert got.shape == want.shape, (i, got.shape, want.shape)
        if p["close"] is None:
            assert len(got) == num_frames(len(p["speech"])) or p["rate"] != 16000
        err = float(np.abs(got - want).max())
        assert err <= TOL, f"stream {i}: max |engine - alone| = {err:.2e}"


def test_bad_input_touches_only_its_stream(animator, voices):
    engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**SETTINGS), max_streams=2)
    a, b = engine.open(1, 0), engine.open(0, 3)
    speech = voices[0][:16000]
    engine.push(a, speech[:8000])
    engine.push(b, speech[:8000])
    for bad, kind in (([np.nan] * 10, ValueError), (np.zeros((2, 5), np.float32), ValueError),
                      (np.zeros(5, np.int16), TypeError), ("noise", TypeError)):
        with pytest.raises(kind):
            engine.push(b, np.asarray(bad) if isinstance(bad, list) else bad)
    with pytest.raises(ValueError):
        engine.set_style(b, person=99)
    engine.push(a, speech[8000:])
    engine.push(b, speech[8000:])
    engine.flush(a)
    engine.flush(b)
    out = {a: [], b: []}
    while step := engine.step():
        for sid, f in step.items():
            out[sid].append(f)
    for sid, (level, person) in ((a, (1, 0)), (b, (0, 3))):
        alone = animator.stream(level=level, person=person, **SETTINGS)
        want = np.concatenate([alone.push(speech), alone.flush()])
        assert np.abs(np.concatenate(out[sid]) - want).max() <= TOL


class _FaultyEngine(StreamEngine):
    """An engine whose forward raises for any group that holds a stream in `faulty`."""

    faulty: set = set()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        run = self.executor.run

        def faulty_run(plan, streams):
            if any(sid in self.faulty for sid in plan.sids):
                raise RuntimeError("injected fault")
            return run(plan, streams)

        self.executor.run = faulty_run


@pytest.mark.parametrize("settings", [SETTINGS, INCREMENTAL], ids=["windowed", "incremental"])
def test_a_failing_group_fails_only_its_streams(animator, voices, settings):
    """Two groups in one step (a flushed stream's short last hop, and full hops): the second
    raises; the first commits and its frames come back in StepFailed; the failed streams are
    unchanged (the incremental encoder's rings too), so a retry gives exactly the frames they
    would have had."""
    engine = _FaultyEngine(animator.model, "cpu", torch.float32, StreamSettings(**settings), max_streams=3)
    short = voices[0][:16000 + 533]  # 32 frames: its last hop has 2, the others 3
    long = np.concatenate([voices[0], voices[1]])
    a, b, c = engine.open(1, 0), engine.open(0, 3), engine.open(1, 5)
    out = {a: [], b: [], c: []}
    engine.push(a, short)
    engine.flush(a)
    for sid in (b, c):
        engine.push(sid, long[:24000])
    while num_frames(len(short)) - engine.frames_emitted(a) >= engine.grid.hop:
        for sid, f in engine.step().items():
            out[sid].append(f)
    assert engine.pending() == [a, b, c]  # a's short hop (first group) and b, c's full hops (second)
    engine.faulty = {b}
    with pytest.raises(StepFailed) as failure:
        engine.step()
    assert set(failure.value.failed) == {b, c} and list(failure.value.frames) == [a]
    out[a].append(failure.value.frames[a])
    assert engine.finished(a)
    engine.faulty = set()
    for sid in (b, c):  # unchanged by their failed hop: they go on as if nothing happened
        engine.push(sid, long[24000:])
        engine.flush(sid)
    while step := engine.step():
        for sid, f in step.items():
            out[sid].append(f)
    for sid, (level, person), speech in ((a, (1, 0), short), (b, (0, 3), long), (c, (1, 5), long)):
        alone = animator.stream(level=level, person=person, **settings)
        want = np.concatenate([alone.push(speech), alone.flush()])
        assert np.abs(np.concatenate(out[sid]) - want).max() <= TOL, sid


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "static-shapes"])
@pytest.mark.parametrize("settings", [SETTINGS, INCREMENTAL], ids=["windowed", "incremental"])
def test_slots_are_reused_and_the_cache_never_grows(animator, voices, cuda_graphs, settings):
    """A closed stream's slot serves the next one from scratch: its KV rows and (incremental)
    its encoder rings are masked by position, so the new stream equals a stream alone."""
    engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**settings), max_streams=2, cuda_graphs=cuda_graphs)
    storage, shape = engine.executor.cache.k.data_ptr(), tuple(engine.executor.cache.k.shape)
    a, b = engine.open(), engine.open()
    with pytest.raises(EngineFull):
        engine.open()
    engine.push(a, voices[0][:16000])  # a's slot then holds a second of a's KV rows and rings
    while engine.step():
        pass
    engine.close(a)
    c = engine.open(level=0, person=5)  # takes a's slot, starts from position 0
    with pytest.raises(KeyError):
        engine.push(a, np.zeros(10, np.float32))
    speech = np.resize(voices[1], 16000 * 5)  # longer than the 3 s cache: the ring wraps
    engine.push(c, speech)
    engine.push(b, np.zeros(3200, np.float32))
    engine.flush(c)
    got = []
    while step := engine.step():
        got += [step[c]] if c in step else []
    alone = animator.stream(level=0, person=5, **settings)
    want = np.concatenate([alone.push(speech), alone.flush()])
    assert np.abs(np.concatenate(got) - want).max() <= TOL
    assert engine.executor.cache.k.data_ptr() == storage and tuple(engine.executor.cache.k.shape) == shape
    assert engine.frames_emitted(c) > engine.max_cache_frames


def test_engine_checks_its_arguments(animator):
    with pytest.raises(ValueError, match="max_streams"):
        StreamEngine(animator.model, "cpu", torch.float32, max_streams=0)
    with pytest.raises(ValueError, match=r"KV cache for 100000 streams of up to 600 s is .* GiB, more than"):
        StreamEngine(animator.model, "cpu", torch.float32, max_streams=100_000)  # refused before any allocation
    with pytest.raises(ValueError, match="hop_ms"):
        StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(hop_ms=150))
    with pytest.raises(ValueError, match="resolve it first"):
        StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(hop_ms="auto"))
    engine = StreamEngine(animator.model, "cpu", torch.float32, max_streams=1)
    with pytest.raises(ValueError, match="sample rate"):
        engine.open(sample_rate=1000)
    assert engine.live == []  # a refused open allocates nothing
    sid = engine.open()
    engine.push(sid, np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="too short"):
        engine.flush(sid)


def test_batch_buckets():
    assert batch_buckets(1) == [1] and batch_buckets(2) == [1, 2] and batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(8) == [1, 2, 4, 8] and batch_buckets(256) == [2**i for i in range(9)]


class _NoHostValues(TorchFunctionMode):
    """Fails on what a CUDA graph cannot capture: a tensor's value read back to the host (it
    would sync and be frozen into the graph) or a tensor made from host data (a copy from
    pageable memory)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
             torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"Tensor.{func.__name__} reads a device value on the host")
        if func in (torch.tensor, torch.as_tensor) and not isinstance(args[0], torch.Tensor):
            raise AssertionError(f"torch.{func.__name__} makes a tensor from host data {args[0]!r}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("encoding", ["windowed", "incremental"])
def test_static_hop_is_capturable(voices, backend, encoding):
    """What each bucket's graph would capture, run eagerly on the CPU under a watch: no value
    goes back to the host and no tensor is made from host data (the Triton backend's step
    under the interpreter), and it equals the engine's own output."""
    if backend == "triton":
        pytest.importorskip("triton")
    animator = Animator.from_config("tiny", seed=11, device="cpu", backend=backend)
    engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**dict(SETTINGS, encoding=encoding)),
                          max_streams=2, cuda_graphs=True)
    sid = engine.open()
    engine.push(sid, voices[0][:16000])
    while engine.step():
        pass
    (hop,) = engine.executor.static_hops.values()
    with torch.inference_mode():
        want = [x.clone() for x in _tensors(hop.fn(hop.inputs))]
        with _NoHostValues():
            got = _tensors(hop.fn(hop.inputs))
    assert len(got) == len(want) >= 2 and all(torch.equal(a, b) for a, b in zip(got, want))


def _tensors(out) -> list:
    """Every tensor of a hop's outputs (the incremental hop's EncodedRows too), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if out is None:  # a windowed hop keeps nothing
        return []
    if isinstance(out, dict):
        out = out.values()
    elif not isinstance(out, (tuple, list)):
        out = vars(out).values()
    return [t for x in out for t in _tensors(x)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, TOL), (torch.float16, 2e-2)])
@pytest.mark.parametrize("encoding", ["windowed", "incremental"])
def test_cuda_graph_replays_equal_eager_engine(voices, dtype, tol, encoding):
    """On CUDA: every bucket's hop captured once and replayed gives the eager engine's frames."""
    animator = Animator.from_config("tiny", seed=11, device="cuda", dtype=dtype)
    outputs = []
    for graphs in (False, True):
        engine = StreamEngine(animator.model, "cuda", dtype, StreamSettings(**dict(SETTINGS, encoding=encoding)),
                              max_streams=4, cuda_graphs=graphs)
        if graphs:
            engine.prepare_static_hops()  # every bucket captured before any stream opens
        ids = [engine.open(level=i % 2, person=3 * i) for i in range(3)]
        frames = {sid: [] for sid in ids}
        for k in range(0, 16000 * 3, 1600):  # streams join and leave at different hops
            for i, sid in enumerate(ids):
                if k >= 1600 * 4 * i and k < 16000 * 3 - 1600 * 3 * i:
                    engine.push(sid, voices[i][k : k + 1600])
            while step := engine.step():
                for sid, f in step.items():
                    frames[sid].append(f)
        if graphs:
            assert {1, 2, 4} <= set(engine.executor.static_hops)
            assert all(h.graph is not None for h in engine.executor.static_hops.values())
        outputs.append([np.concatenate(frames[sid]) for sid in ids])
    for i, (eager, graphed) in enumerate(zip(*outputs)):
        assert eager.shape == graphed.shape and len(eager) >= 15
        assert np.abs(eager - graphed).max() <= tol, f"stream {i}"
