"""Before/after measurements of the performance levers, interleaved so that a shared machine's
load hits both sides alike (a script, not a pytest suite):

    python benchmarks/levers.py front-end  [--seconds 20] [--threads 1] [--rounds 3]
    python benchmarks/levers.py shared-front-end [--seconds 10]
    python benchmarks/levers.py startup [--rounds 3]

front-end         the channels-last CNN front end against the Conv1d [B, C, L] one it replaced,
                  end to end at release size, float32 and bfloat16, next to the reference.
shared-front-end  a checkpoint whose encoders carry equal CNN weights: one front end or two.
startup           checkpoint on disk -> first frame of 1 s, each variant in a fresh process.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict, release_to_fast
from emotalk_fast.tools.measure import generated_speech
from emotalk_fast.model.encoder import ConvFrontEnd

CONFIG = EmoTalkConfig.from_name("emotalk")


def conv1d_front_end(self, wave):
    """The front end before the lever: Conv1d in [B, C, L], transposed around each LayerNorm."""
    x = wave[:, None, :]
    for conv, norm in zip(self.convs, self.norms):
        x = F.gelu(norm(conv(x).transpose(1, 2)).transpose(1, 2))
    return x.transpose(1, 2)


def interleaved(cases: dict, rounds: int) -> dict:
    """{name: (fn, setup)} -> {name: [seconds]}; one warm-up round, then `rounds` rounds."""
    times = {name: [] for name in cases}
    for r in range(rounds + 1):
        for name, (fn, setup) in cases.items():
            setup()
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def report(times: dict, seconds: float | None, baseline: str | None = None) -> None:
    base = statistics.median(times[baseline]) if baseline else None
    for name, v in times.items():
        m = statistics.median(v)
        line = f"  {name:50s} median {m:7.3f} s"
        if seconds:
            line += f"  RTF {m / seconds:.3f}  {1000 * m / seconds:6.0f} ms per s of audio"
        if base:
            line += f"  {base / m:5.2f}x vs {baseline}"
        print(line + f"  runs {[round(x, 3) for x in v]}")


def front_end(args) -> None:
    from emotalk_fast.training.reference import EmoTalkReference

    lean = ConvFrontEnd.forward
    speech = generated_speech(args.seconds)
    wave = torch.from_numpy(speech)[None]
    ref = EmoTalkReference(CONFIG).eval()
    weights = release_to_fast(random_release_state_dict(CONFIG, rule="fast"), CONFIG)
    fp32 = Animator.from_state_dict(CONFIG, dict(weights), device="cpu")
    bf16 = Animator.from_state_dict(CONFIG, dict(weights), device="cpu", dtype="bfloat16")

    def use(forward):
        return lambda: setattr(ConvFrontEnd, "forward", forward)

    def reference():
        with torch.inference_mode():
            ref.predict(wave)
    try:
        times = interleaved({
            "reference float32": (reference, use(lean)),
            "emotalk_fast float32, Conv1d front end": (lambda: fp32.animate(speech), use(conv1d_front_end)),
            "emotalk_fast float32": (lambda: fp32.animate(speech), use(lean)),
            "emotalk_fast bfloat16, Conv1d front end": (lambda: bf16.animate(speech), use(conv1d_front_end)),
            "emotalk_fast bfloat16": (lambda: bf16.animate(speech), use(lean)),
        }, args.rounds)
    finally:
        ConvFrontEnd.forward = lean
    print(f"{args.seconds:g} s of speech, {torch.get_num_threads()} thread(s), median of {args.rounds}")
    report(times, args.seconds, "reference float32")


def shared_front_end(args) -> None:
    weights = release_to_fast(random_release_state_dict(CONFIG, rule="fast"), CONFIG)
    for key in [k for k in weights if k.startswith("content_encoder.front_end.")]:
        weights["emotion_encoder" + key[len("content_encoder"):]] = weights[key]
    speech = generated_speech(args.seconds)
    for dtype in ("float32", "bfloat16"):
        shared = Animator.from_state_dict(CONFIG, dict(weights), device="cpu", dtype=dtype)
        separate = Animator.from_state_dict(CONFIG, dict(weights), device="cpu", dtype=dtype)
        separate.model.emotion_encoder.front_end = ConvFrontEnd(CONFIG.emotion).to(separate.dtype)
        separate.model.emotion_encoder.front_end.load_state_dict(shared.model.content_encoder.front_end.state_dict())
        assert shared.model.shares_front_end and not separate.model.shares_front_end
        times = interleaved({"two front ends": (lambda: separate.animate(speech), lambda: None),
                             "one shared front end": (lambda: shared.animate(speech), lambda: None)}, args.rounds)
        print(f"{dtype}: {args.seconds:g} s of speech, {torch.get_num_threads()} thread(s), median of {args.rounds}")
        report(times, args.seconds, "two front ends")
        del shared, separate


_STARTUP = {
    "reference: build + torch.load .pth + load_state_dict": """
from emotalk_fast.training.reference import EmoTalkReference, load_release_weights
m = EmoTalkReference(cfg).eval()
load_release_weights(m, torch.load(root + '/EmoTalk.pth', map_location='cpu', weights_only=True))
with torch.inference_mode(): m.predict(torch.from_numpy(speech)[None])""",
    "emotalk_fast: init on CPU + copy from safetensors": """
from safetensors.torch import load_file
from emotalk_fast.model.emotalk import EmoTalk
m = EmoTalk(cfg)
m.load_state_dict({k: v.clone() for k, v in load_file(root + '/converted/model.safetensors').items()})
Animator(m, device='cpu').animate(speech)""",
    "emotalk_fast: release .pth (mmap, remap)": "Animator.from_pretrained(root + '/EmoTalk.pth', device='cpu').animate(speech)",
    "emotalk_fast: converted (meta + mmap + assign)": "Animator.from_pretrained(root + '/converted', device='cpu').animate(speech)",
    "emotalk_fast: float32 directory run in bfloat16 (cast at load)":
        "Animator.from_pretrained(root + '/converted', device='cpu', dtype='bfloat16').animate(speech)",
    "emotalk_fast: bfloat16 directory (convert --dtype bfloat16)":
        "Animator.from_pretrained(root + '/converted-bf16', device='cpu', dtype='bfloat16').animate(speech)",
}
_PRELUDE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
import transformers.models.wav2vec2.modeling_wav2vec2  # imports are not start-up
from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.tools.measure import generated_speech
cfg, root, speech = EmoTalkConfig.from_name('emotalk'), sys.argv[1], generated_speech(1.0)
t0 = time.perf_counter()
{body}
print('SECONDS', time.perf_counter() - t0)
"""


def startup(args) -> None:
    from emotalk_fast.model.checkpoint import load_release_checkpoint, save_pretrained
    from emotalk_fast.training.reference import EmoTalkReference

    with tempfile.TemporaryDirectory() as root:
        torch.save(EmoTalkReference(CONFIG).state_dict(), f"{root}/EmoTalk.pth")
        cfg, sd = load_release_checkpoint(f"{root}/EmoTalk.pth")
        save_pretrained(sd, cfg, f"{root}/converted")
        save_pretrained({k: v.to(torch.bfloat16) for k, v in sd.items()}, cfg, f"{root}/converted-bf16")
        del sd
        times = {name: [] for name in _STARTUP}
        for _ in range(args.rounds):
            for name, body in _STARTUP.items():
                out = subprocess.run([sys.executable, "-c", _PRELUDE.format(body=body), root, str(torch.get_num_threads())],
                                     capture_output=True, text=True, check=True)
                times[name].append(float(out.stdout.split("SECONDS")[-1]))
    print(f"start-up to the first frame of 1 s, fresh process each, median of {args.rounds}")
    report(times, None, "reference: build + torch.load .pth + load_state_dict")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lever", choices=["front-end", "shared-front-end", "startup"])
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.seconds is None:
        args.seconds = {"front-end": 20.0, "shared-front-end": 10.0}.get(args.lever)
    {"front-end": front_end, "shared-front-end": shared_front_end, "startup": startup}[args.lever](args)


if __name__ == "__main__":
    main()
