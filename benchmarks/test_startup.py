"""Start-up: a release-size checkpoint on disk -> the first frame of 1 s of speech.

reference: build EmoTalkReference (its module init), torch.load the .pth, load_state_dict,
predict. emotalk_fast: build on the meta device and assign the memory-mapped safetensors
tensors (directory from `convert`), or remap a release .pth at load. The files were just
written, so they are read from the page cache (a warm start)."""
import pytest
import torch

from benchutil import CONFIG, cases, free_models, measure, require, speech


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from emotalk_fast.model.checkpoint import load_release_checkpoint, save_pretrained
    from emotalk_fast.training.reference import EmoTalkReference

    free_models()  # the other suites' cached models: make room for two more
    root = tmp_path_factory.mktemp("startup")
    torch.save(EmoTalkReference(CONFIG).state_dict(), root / "EmoTalk.pth")
    cfg, sd = load_release_checkpoint(root / "EmoTalk.pth")
    save_pretrained(sd, cfg, root / "converted")
    del sd
    return root


def _skip_reference_low_precision(device, provider, dtype):
    if provider == "reference" and dtype != "float32":
        return "the reference loads in float32 (its release dtype)"
    return None


@pytest.mark.parametrize("source", ["converted", "pth"])
@pytest.mark.parametrize("device,provider,dtype", cases(_skip_reference_low_precision))
def test_startup(benchmark, checkpoints, device, provider, dtype, source):
    require(device, provider, dtype)
    first = speech(1)
    if provider == "reference":
        if source != "pth":
            pytest.skip("the reference reads the release .pth only")
        from emotalk_fast.training.reference import EmoTalkReference, load_release_weights

        def run():
            model = EmoTalkReference(CONFIG).eval()
            load_release_weights(model, torch.load(checkpoints / "EmoTalk.pth", map_location="cpu", weights_only=True))
            model.to(device)
            with torch.inference_mode():
                return model.predict(torch.from_numpy(first)[None].to(device))["blendshapes"]
    else:
        from emotalk_fast import Animator

        path = checkpoints / ("EmoTalk.pth" if source == "pth" else "converted")

        def run():
            return Animator.from_pretrained(path, device=device, dtype=dtype,
                                            backend=provider.split("-")[1]).animate(first)
    measure(benchmark, run, op="startup", dtype=dtype, shape="release", device=device, provider=provider,
            rounds=2, source=source)
