"""Offline end to end at release size: speech in, blendshapes out, for 1, 10 and 60 s of
espeak-ng speech. On CPU the 60 s case runs for the fastest provider only (emotalk_fast
bfloat16) so the suite stays a few minutes; all 60 s cases carry the `long` mark
(deselect with -m "not long")."""
import pytest
import torch

from benchutil import cases, fast_animator, measure, reference_context, reference_model, require, speech

SECONDS = (1, 10, 60)


def _skip_long_on_cpu(device, provider, dtype):
    if device == "cpu" and not (provider == "emotalk_fast-torch" and dtype == "bfloat16"):
        return "60 s on CPU runs for emotalk_fast bfloat16 only (keeps the suite to a few minutes)"
    return None


PARAMS = [pytest.param(*p.values, s, marks=list(p.marks) + ([pytest.mark.long] if s == 60 else []), id=f"{p.id}-{s}s")
          for s in SECONDS for p in cases(_skip_long_on_cpu if s == 60 else None)]


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
    rounds = 1 if seconds == 60 else 3
    measure(benchmark, run, op="offline", dtype=dtype, shape=f"{seconds}s", device=device, provider=provider,
            audio_seconds=seconds, rounds=rounds)
