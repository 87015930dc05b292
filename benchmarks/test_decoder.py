"""The decoder alone (maps, one periodic-bias transformer layer, blendshape head) on encoder
outputs of 10 s and 60 s (300 and 1800 frames). The reference builds the T x T bias and runs
nn.TransformerDecoder with its full cross-attention; the fast model attends in query blocks
and folds the cross-attention into one matrix."""
import pytest
import torch
import torch.nn.functional as F

from benchutil import CONFIG, cases, fast_animator, measure, reference_context, reference_model, require


@pytest.mark.parametrize("frames", [300, 1800])
@pytest.mark.parametrize("device,provider,dtype", cases())
def test_decoder(benchmark, device, provider, dtype, frames):
    require(device, provider, dtype)
    g = torch.Generator().manual_seed(0)
    content = torch.randn(1, frames, CONFIG.content.hidden_size, generator=g).to(device)
    emotion = torch.randn(1, frames, CONFIG.emotion.hidden_size, generator=g).to(device)
    level = F.one_hot(torch.tensor([1]), CONFIG.decoder.num_levels).float().to(device)
    person = F.one_hot(torch.tensor([0]), CONFIG.decoder.num_persons).float().to(device)
    if provider == "reference":
        model = reference_model(device)

        def run():
            with reference_context(device, dtype):
                return model.decode(content, emotion, level, person)[0]
    else:
        model = fast_animator(device, dtype, provider.split("-")[1]).model
        cast = [t.to(getattr(torch, dtype)) for t in (content, emotion, level, person)]

        def run():
            with torch.inference_mode():
                return model.decode(*cast)[0]
    measure(benchmark, run, op="decoder", dtype=dtype, shape=f"{frames}frames", device=device, provider=provider,
            audio_seconds=frames / 30, rounds=5)
