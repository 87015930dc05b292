"""Offline end to end at release size: speech in, blendshapes out, for 1, 10 and 60 s of
espeak-ng speech (other lengths: EMOTALK_BENCH_SECONDS=20 or =1,20). On CPU a case over 20 s
runs for the fastest provider only (emotalk_fast bfloat16) so the suite stays a few minutes;
those cases carry the `long` mark (deselect with -m "not long")."""
import os

import pytest
import torch

from benchutil import cases, fast_animator, measure, reference_context, reference_model, require, speech

SECONDS = tuple(float(s) if "." in s else int(s)
                for s in os.environ.get("EMOTALK_BENCH_SECONDS", "1,10,60").split(","))


def _skip_long_on_cpu(device, provider, dtype):
    if device == "cpu" and not (provider == "emotalk_fast-torch" and dtype == "bfloat16"):
        return "over 20 s on CPU runs for emotalk_fast bfloat16 only (keeps the suite to a few minutes)"
    return None


PARAMS = [pytest.param(*p.values, s, marks=list(p.marks) + ([pytest.mark.long] if s > 20 else []), id=f"{p.id}-{s}s")
          for s in SECONDS for p in cases(_skip_long_on_cpu if s > 20 else None)]


@pytest.mark.parametrize("device,provider,dtype,seconds", PARAMS)
def test_offline(benchmark, device, provider, dtype, seconds):
    require(device, provider, dtype)
    audio = speech(seconds)
    if provider == "reference":
        model = reference_model(device)
        wave = torch.from_numpy(audio)[None].to(device)

        def run():
            with reference_context(device, dtype):
                return model.predict(wave, level=1, person=0)["blendshapes"]
    else:
        animator = fast_animator(device, dtype, provider.split("-")[1])

        def run():
            return animator.animate(audio, level=1, person=0)
    rounds = 1 if seconds > 20 else 3
    measure(benchmark, run, op="offline", dtype=dtype, shape=f"{seconds}s", device=device, provider=provider,
            audio_seconds=seconds, rounds=rounds)
