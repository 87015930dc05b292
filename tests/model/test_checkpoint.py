"""Checkpoint layouts: the release key list, strict loading with readable errors, both
weight-norm namings, this library's safetensors directory, convert and info."""
import json

import pytest
import torch

from emotalk_fast import Animator, CheckpointError, EmoTalkConfig
from emotalk_fast.model.checkpoint import (infer_release_config, load_release_checkpoint, random_release_state_dict,
                                     release_manifest)
from emotalk_fast.cli import main as cli_main
from helpers import FIXTURES


def _manifest(path):
    return [(k, tuple(s)) for k, s in json.loads(path.read_text())["manifest"]]


def test_release_manifest_matches_the_released_checkpoint():
    cfg = EmoTalkConfig.from_name("emotalk")
    assert release_manifest(cfg) == _manifest(FIXTURES / "official_keys_full.json")
    total = sum(torch.Size(s).numel() for _, s in release_manifest(cfg))
    assert round(total / 1e6, 1) == 640.6
    assert release_manifest(EmoTalkConfig.from_name("mini")) == _manifest(FIXTURES / "oracle_mini" / "oracle.json")


def test_config_is_inferred_from_shapes():
    for name in ("mini", "tiny"):
        cfg = EmoTalkConfig.from_name(name)
        assert infer_release_config(random_release_state_dict(cfg)) == cfg


@pytest.fixture()
def tiny_sd():
    return random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=2)


def _speech():
    return torch.sin(torch.arange(8000) / 7.0).numpy() * 0.1


def test_both_weight_norm_namings_load_the_same(tiny_sd, tmp_path):
    new = {}
    for k, v in tiny_sd.items():
        k = k.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1")
        new[k] = v
    torch.save(tiny_sd, tmp_path / "old.pth")
    torch.save(new, tmp_path / "new.pth")
    a = Animator.from_pretrained(tmp_path / "old.pth", device="cpu").animate(_speech()).blendshapes
    b = Animator.from_pretrained(tmp_path / "new.pth", device="cpu").animate(_speech()).blendshapes
    assert (a == b).all()


def test_unused_release_tensors_are_optional(tiny_sd, tmp_path):
    """The release carries tensors inference never reads (wav2vec2's lm_head and masked_spec_embed):
    a checkpoint without them loads to the very same weights."""
    unused = [k for k in tiny_sd if "lm_head" in k or "masked_spec_embed" in k]
    assert unused  # the fixture has them, so the trimmed file below lacks something
    trimmed = {k: v for k, v in tiny_sd.items() if k not in unused}
    torch.save(tiny_sd, tmp_path / "full.pth")
    torch.save(trimmed, tmp_path / "trimmed.pth")
    cfg_full, full = load_release_checkpoint(tmp_path / "full.pth")
    cfg, loaded = load_release_checkpoint(tmp_path / "trimmed.pth")
    assert cfg == cfg_full and loaded.keys() == full.keys()
    assert all(torch.equal(loaded[k], full[k]) for k in full)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("bs_map_r.weight"), "1 missing keys: bs_map_r.weight"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "1 unexpected keys: extra.weight"),
    (lambda sd: sd.__setitem__("obj_vector_person.bias", torch.zeros(31)),
     r"obj_vector_person.bias: checkpoint \(31,\) vs expected \(12,\)"),
])
def test_mismatches_are_named(tiny_sd, tmp_path, edit, message):
    cfg = EmoTalkConfig.from_name("tiny")
    edit(tiny_sd)
    torch.save(tiny_sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        load_release_checkpoint(tmp_path / "bad.pth", cfg)


def test_unreadable_checkpoints(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Animator.from_pretrained(tmp_path / "corrupt.pth")
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        Animator.from_pretrained(tmp_path / "notensors.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an EmoTalk checkpoint"):
        Animator.from_pretrained(tmp_path / "other.pth")


def test_pickles_with_code_are_refused(tmp_path):
    """weights_only=True: a pickle that would run code is rejected, not executed."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Animator.from_pretrained(tmp_path / "evil.pth")


def test_converted_directory_is_memory_mapped_and_strict(tiny_sd, tmp_path):
    torch.save(tiny_sd, tmp_path / "EmoTalk.pth")
    assert cli_main(["convert", str(tmp_path / "EmoTalk.pth"), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["format_version"] == 1 and config["model_type"] == "emotalk"
    a = Animator.from_pretrained(tmp_path / "EmoTalk.pth", device="cpu").animate(_speech()).blendshapes
    b = Animator.from_pretrained(tmp_path / "out", device="cpu").animate(_speech()).blendshapes
    assert (a == b).all()
    (tmp_path / "out" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid config"):
        Animator.from_pretrained(tmp_path / "out")
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    (tmp_path / "out" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot read"):
        Animator.from_pretrained(tmp_path / "out")


def test_cli_info_and_errors(tiny_sd, tmp_path, capsys):
    torch.save(tiny_sd, tmp_path / "EmoTalk.pth")
    assert cli_main(["info", str(tmp_path / "EmoTalk.pth")]) == 0
    out = capsys.readouterr().out
    assert "release state dict" in out and "2 layers x 64" in out and "period 30" in out
    assert cli_main(["info", "--json", str(tmp_path / "EmoTalk.pth")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["decoder"]["num_heads"] == 4
    assert cli_main(["info", str(tmp_path / "missing.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotalk-fast info: error: checkpoint not found") and "\n" not in err
