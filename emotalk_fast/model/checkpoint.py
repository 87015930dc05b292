"""Checkpoints: the released `EmoTalk.pth` layout, this library's safetensors format, and the
one-time remap between them (the only place where weights are renamed, packed or folded).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_EMOTION_LABELS, PRESETS, DecoderConfig, EmoTalkConfig, EncoderConfig
from ..errors import InvalidInput
from ..files import atomic_write

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Present in release checkpoints, never used for inference.
_IGNORED_SUFFIXES = ("masked_spec_embed",)
_IGNORED_PARTS = (".lm_head.",)

_NEW_WN = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_OLD_WN = ("weight_g", "weight_v")


class CheckpointError(InvalidInput):
    """A checkpoint is missing, unreadable, or does not match the expected layout."""


# --- the release layout -----------------------------------------------------------------------
def _encoder_manifest(prefix: str, cfg: EncoderConfig) -> list[tuple[str, tuple[int, ...]]]:
    d, m = cfg.hidden_size, [(f"{prefix}masked_spec_embed", (cfg.hidden_size,))]
    in_dims = (1,) + cfg.conv_dim[:-1]
    for i, (ci, co, k) in enumerate(zip(in_dims, cfg.conv_dim, cfg.conv_kernel)):
        p = f"{prefix}feature_extractor.conv_layers.{i}."
        m += [(p + "conv.weight", (co, ci, k))]
        m += [(p + "conv.bias", (co,))] if cfg.conv_bias else []
        m += [(p + "layer_norm.weight", (co,)), (p + "layer_norm.bias", (co,))]
    c = cfg.conv_dim[-1]
    m += [(f"{prefix}feature_projection.layer_norm.weight", (c,)),
          (f"{prefix}feature_projection.layer_norm.bias", (c,)),
          (f"{prefix}feature_projection.projection.weight", (d, c)),
          (f"{prefix}feature_projection.projection.bias", (d,)),
          (f"{prefix}encoder.pos_conv_embed.conv.bias", (d,)),
          (f"{prefix}encoder.pos_conv_embed.conv.weight_g", (1, 1, cfg.num_pos_conv_taps)),
          (f"{prefix}encoder.pos_conv_embed.conv.weight_v", (d, d // cfg.num_pos_conv_groups, cfg.num_pos_conv_taps)),
          (f"{prefix}encoder.layer_norm.weight", (d,)),
          (f"{prefix}encoder.layer_norm.bias", (d,))]
    for i in range(cfg.num_layers):
        p = f"{prefix}encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            m += [(f"{p}attention.{name}.weight", (d, d)), (f"{p}attention.{name}.bias", (d,))]
        m += [(p + "layer_norm.weight", (d,)), (p + "layer_norm.bias", (d,)),
              (p + "feed_forward.intermediate_dense.weight", (cfg.intermediate_size, d)),
              (p + "feed_forward.intermediate_dense.bias", (cfg.intermediate_size,)),
              (p + "feed_forward.output_dense.weight", (d, cfg.intermediate_size)),
              (p + "feed_forward.output_dense.bias", (d,)),
              (p + "final_layer_norm.weight", (d,)), (p + "final_layer_norm.bias", (d,))]
    m += [(f"{prefix}lm_head.weight", (cfg.lm_head_size, d)), (f"{prefix}lm_head.bias", (cfg.lm_head_size,))]
    return m


def release_manifest(cfg: EmoTalkConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every (key, shape) of a released EmoTalk.pth for this config, in the release's order."""
    dec, D = cfg.decoder, cfg.decoder.feature_dim
    m = _encoder_manifest("audio_encoder_cont.", cfg.content)
    m += _encoder_manifest("audio_encoder_emo.wav2vec2.", cfg.emotion)
    h = cfg.emotion.hidden_size
    m += [("audio_encoder_emo.classifier.dense.weight", (h, h)), ("audio_encoder_emo.classifier.dense.bias", (h,)),
          ("audio_encoder_emo.classifier.out_proj.weight", (cfg.emotion.num_labels, h)),
          ("audio_encoder_emo.classifier.out_proj.bias", (cfg.emotion.num_labels,))]
    for name, (o, i) in {
        "audio_feature_map_cont": (dec.content_dim, cfg.content.hidden_size),
        "audio_feature_map_emo": (D, h),
        "audio_feature_map_emo2": (dec.emotion_dim, D),
        "obj_vector_level": (dec.style_dim, dec.num_levels),
        "obj_vector_person": (dec.style_dim, dec.num_persons),
    }.items():
        m += [(f"{name}.weight", (o, i)), (f"{name}.bias", (o,))]
    p = "transformer_decoder.layers.0."
    for attn in ("self_attn", "multihead_attn"):
        m += [(f"{p}{attn}.in_proj_weight", (3 * D, D)), (f"{p}{attn}.in_proj_bias", (3 * D,)),
              (f"{p}{attn}.out_proj.weight", (D, D)), (f"{p}{attn}.out_proj.bias", (D,))]
    m += [(f"{p}linear1.weight", (dec.ff_dim, D)), (f"{p}linear1.bias", (dec.ff_dim,)),
          (f"{p}linear2.weight", (D, dec.ff_dim)), (f"{p}linear2.bias", (D,))]
    for n in (1, 2, 3):
        m += [(f"{p}norm{n}.weight", (D,)), (f"{p}norm{n}.bias", (D,))]
    m += [("bs_map_r.weight", (dec.num_blendshapes, D)), ("bs_map_r.bias", (dec.num_blendshapes,))]
    return m


RANDOM_RULES = ("oracle", "fast")


def random_release_state_dict(cfg: EmoTalkConfig, seed: int = 0, rule: str = "oracle") -> dict[str, torch.Tensor]:
    """Deterministic random weights in the release layout, for tests and benchmarks.

    Each tensor in manifest order gets (mean, std) by the first rule that matches: weight_g
    (1, .1); bias (0, .1); 1-D (1, .1); else (0, 1/sqrt(fan_in)), so activations stay in a
    realistic range (no overflow, no denormals to slow the CPU). `rule` picks the draws:
    "oracle": one float64 standard-normal numpy draw per tensor (the oracle fixtures' rule, ~15 s
    at release size); "fast": torch's generator, uniform with the same mean and std (about a
    second). The oracle's fourth rule (masked_spec_embed) never fires: that tensor is 1-D.
    """
    if rule not in RANDOM_RULES:
        raise InvalidInput(f"unknown random-weight rule {rule!r}: choose one of {', '.join(RANDOM_RULES)}")
    rng = np.random.Generator(np.random.PCG64(seed)) if rule == "oracle" else torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in release_manifest(cfg):
        if key.endswith("weight_g"):
            mean, std = 1.0, 0.1
        elif key.endswith("bias"):
            mean, std = 0.0, 0.1
        elif len(shape) == 1:
            mean, std = 1.0, 0.1
        else:
            mean, std = 0.0, 1.0 / math.sqrt(math.prod(shape[1:]))
        if rule == "oracle":
            z = rng.standard_normal(math.prod(shape))
            out[key] = torch.from_numpy((z * std + mean).astype(np.float32).reshape(shape))
        else:
            half_width = math.sqrt(3) * std  # a uniform draw of this std
            out[key] = torch.empty(shape).uniform_(mean - half_width, mean + half_width, generator=rng)
    return out


def infer_release_config(sd: dict[str, torch.Tensor], num_heads: int | None = None) -> EmoTalkConfig:
    """Read the encoder and decoder sizes off a release state dict's shapes.

    Head counts are not visible in shapes: a state dict shaped exactly like a named preset gets
    that preset; otherwise encoders get 64-wide heads (16 for wav2vec2-large) and the decoder
    the release's 4 (pass a config to override).
    """
    if num_heads is None:
        shapes = {k: tuple(v.shape) for k, v in sd.items() if not _ignored(k)}
        for preset in PRESETS.values():
            if shapes == {k: s for k, s in release_manifest(preset) if not _ignored(k)}:
                return preset
    def encoder(prefix: str, num_labels: int) -> EncoderConfig:
        convs = sorted(_indices(sd, prefix + "feature_extractor.conv_layers."))
        if not convs:
            raise CheckpointError(f"no '{prefix}feature_extractor' weights: not an EmoTalk checkpoint")
        cw = [sd[f"{prefix}feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
        v = sd[f"{prefix}encoder.pos_conv_embed.conv.weight_v"]
        hidden = v.shape[0]
        layers = _indices(sd, prefix + "encoder.layers.")
        lm = sd.get(f"{prefix}lm_head.weight")
        return EncoderConfig(
            hidden_size=hidden, num_layers=len(layers), num_heads=num_heads or max(hidden // 64, 1),
            intermediate_size=sd[f"{prefix}encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
            conv_dim=tuple(w.shape[0] for w in cw), conv_kernel=tuple(w.shape[2] for w in cw),
            conv_stride=EncoderConfig().conv_stride[: len(cw)],
            conv_bias=f"{prefix}feature_extractor.conv_layers.0.conv.bias" in sd,
            num_pos_conv_taps=v.shape[2], num_pos_conv_groups=hidden // v.shape[1],
            num_labels=num_labels, lm_head_size=lm.shape[0] if lm is not None else 32,
        )

    try:
        num_labels = sd["audio_encoder_emo.classifier.out_proj.weight"].shape[0]
        dec = DecoderConfig(
            content_dim=sd["audio_feature_map_cont.weight"].shape[0],
            emotion_dim=sd["audio_feature_map_emo2.weight"].shape[0],
            style_dim=sd["obj_vector_level.weight"].shape[0],
            num_levels=sd["obj_vector_level.weight"].shape[1],
            num_persons=sd["obj_vector_person.weight"].shape[1],
            ff_dim=sd["transformer_decoder.layers.0.linear1.weight"].shape[0],
            num_blendshapes=sd["bs_map_r.weight"].shape[0],
        )
        labels = DEFAULT_EMOTION_LABELS if num_labels == len(DEFAULT_EMOTION_LABELS) else \
            tuple(f"emotion_{i}" for i in range(num_labels))
        return EmoTalkConfig(encoder("audio_encoder_cont.", 0), encoder("audio_encoder_emo.wav2vec2.", num_labels),
                             dec, labels)
    except KeyError as e:
        raise CheckpointError(f"not an EmoTalk checkpoint: key {e.args[0]!r} is missing") from None


def _indices(sd: dict, prefix: str) -> set[int]:
    """The numbers N of keys '<prefix>N.<rest>'."""
    return {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}


def rename_weight_norm(sd: dict[str, torch.Tensor], parametrized: bool = False) -> dict[str, torch.Tensor]:
    """The weight-norm tensors under one naming: the release's `weight_g`/`weight_v`, or with
    `parametrized` torch's newer `parametrizations.weight.original0/1`. Either naming is read."""
    src, dst = (_OLD_WN, _NEW_WN) if parametrized else (_NEW_WN, _OLD_WN)
    out = {}
    for k, v in sd.items():
        for a, b in zip(src, dst):
            if k.endswith(a):
                k = k[: -len(a)] + b
        out[k] = v
    return out


def check_release_state_dict(sd: dict[str, torch.Tensor], cfg: EmoTalkConfig) -> None:
    """Strict check against the release manifest; the message names every mismatch."""
    expected = {k: s for k, s in release_manifest(cfg) if not _ignored(k)}
    got = {k: tuple(v.shape) for k, v in sd.items() if not _ignored(k)}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(f"{k}: checkpoint {got[k]} vs expected {expected[k]}"
                    for k in set(got) & set(expected) if got[k] != expected[k])
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not match the EmoTalk layout: " + "; ".join(problems))


def _ignored(key: str) -> bool:
    return key.endswith(_IGNORED_SUFFIXES) or any(p in f".{key}" for p in _IGNORED_PARTS)


def _encoder_to_fast(sd, src: str, dst: str, cfg: EncoderConfig, out: dict) -> None:
    for i in range(len(cfg.conv_dim)):
        p = f"{src}feature_extractor.conv_layers.{i}."
        out[f"{dst}front_end.convs.{i}.weight"] = sd[p + "conv.weight"]
        if cfg.conv_bias:
            out[f"{dst}front_end.convs.{i}.bias"] = sd[p + "conv.bias"]
        out[f"{dst}front_end.norms.{i}.weight"] = sd[p + "layer_norm.weight"]
        out[f"{dst}front_end.norms.{i}.bias"] = sd[p + "layer_norm.bias"]
    renames = {"feature_projection.layer_norm": "proj_norm", "feature_projection.projection": "proj",
               "encoder.layer_norm": "final_norm"}
    for a, b in renames.items():
        out[f"{dst}{b}.weight"] = sd[f"{src}{a}.weight"]
        out[f"{dst}{b}.bias"] = sd[f"{src}{a}.bias"]
    g = sd[f"{src}encoder.pos_conv_embed.conv.weight_g"]
    v = sd[f"{src}encoder.pos_conv_embed.conv.weight_v"]
    # weight norm over dim 2: one norm per tap, taken over output and input channels
    w = g.double() * v.double() / v.double().norm(dim=(0, 1), keepdim=True)
    out[f"{dst}pos_conv.weight"] = w.to(v.dtype)
    out[f"{dst}pos_conv.bias"] = sd[f"{src}encoder.pos_conv_embed.conv.bias"]
    for i in range(cfg.num_layers):
        p, q = f"{src}encoder.layers.{i}.", f"{dst}layers.{i}."
        for part in ("weight", "bias"):
            out[q + "qkv." + part] = torch.cat([sd[f"{p}attention.{n}_proj.{part}"] for n in "qkv"])
            out[q + "out." + part] = sd[f"{p}attention.out_proj.{part}"]
            out[q + "norm1." + part] = sd[f"{p}layer_norm.{part}"]
            out[q + "norm2." + part] = sd[f"{p}final_layer_norm.{part}"]
            out[q + "ff1." + part] = sd[f"{p}feed_forward.intermediate_dense.{part}"]
            out[q + "ff2." + part] = sd[f"{p}feed_forward.output_dense.{part}"]


def release_to_fast(sd: dict[str, torch.Tensor], cfg: EmoTalkConfig) -> dict[str, torch.Tensor]:
    """Release state dict (checked) -> this library's EmoTalk state dict."""
    out: dict[str, torch.Tensor] = {}
    _encoder_to_fast(sd, "audio_encoder_cont.", "content_encoder.", cfg.content, out)
    _encoder_to_fast(sd, "audio_encoder_emo.wav2vec2.", "emotion_encoder.", cfg.emotion, out)
    renames = {
        "audio_encoder_emo.classifier.dense": "emotion_encoder.cls_dense",
        "audio_encoder_emo.classifier.out_proj": "emotion_encoder.cls_out",
        "audio_feature_map_cont": "content_map", "audio_feature_map_emo": "emotion_map",
        "audio_feature_map_emo2": "emotion_map2", "obj_vector_level": "level_embed",
        "obj_vector_person": "person_embed", "bs_map_r": "blendshape_head",
        "transformer_decoder.layers.0.self_attn.out_proj": "decoder.out",
        "transformer_decoder.layers.0.linear1": "decoder.ff1",
        "transformer_decoder.layers.0.linear2": "decoder.ff2",
        "transformer_decoder.layers.0.norm1": "decoder.norm1",
        "transformer_decoder.layers.0.norm2": "decoder.norm2",
        "transformer_decoder.layers.0.norm3": "decoder.norm3",
    }
    for a, b in renames.items():
        out[f"{b}.weight"] = sd[f"{a}.weight"]
        out[f"{b}.bias"] = sd[f"{a}.bias"]
    p = "transformer_decoder.layers.0."
    out["decoder.qkv.weight"] = sd[p + "self_attn.in_proj_weight"]
    out["decoder.qkv.bias"] = sd[p + "self_attn.in_proj_bias"]
    # Each frame attends to exactly one memory frame, so the cross-attention is out_proj(V(m)):
    # fold W_o @ W_v (in float64) into one linear map.
    D = cfg.decoder.feature_dim
    dtype = sd[p + "multihead_attn.in_proj_weight"].dtype
    w_v = sd[p + "multihead_attn.in_proj_weight"][2 * D:].double()
    b_v = sd[p + "multihead_attn.in_proj_bias"][2 * D:].double()
    w_o = sd[p + "multihead_attn.out_proj.weight"].double()
    b_o = sd[p + "multihead_attn.out_proj.bias"].double()
    out["decoder.cross.weight"] = (w_o @ w_v).to(dtype)
    out["decoder.cross.bias"] = (w_o @ b_v + b_o).to(dtype)
    return {k: v.contiguous() for k, v in out.items()}


def read_release_state_dict(path: str | os.PathLike, config: EmoTalkConfig | None = None):
    """A release-layout .pth -> (config, its state dict in the release's naming, checked).

    The config is `config` when given, else an emotalk_fast `config.json` beside the file (the
    trainer writes one; it knows head counts), else the tensor shapes (`infer_release_config`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (no weights come with the library: give the release's "
                              "EmoTalk.pth, or try the model on random weights: --random-weights PRESET, "
                              "Animator.from_config)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # a zip archive (torch.save) or a pickle
        raise CheckpointError(f"{path} is not a checkpoint: a PyTorch .pth is a zip archive or a pickle, "
                              f"this file starts with {head!r}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt zip, truncated file, pickle with code in it ...
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    sd = rename_weight_norm(sd)
    cfg = config or _config_beside(path) or infer_release_config(sd)
    check_release_state_dict(sd, cfg)
    return cfg, sd


def _config_beside(path: Path) -> EmoTalkConfig | None:
    """The emotalk_fast config.json next to a .pth, if there is one (another program's
    config.json, without our format_version, is not ours and is left alone)."""
    side = path.with_name(CONFIG_NAME)
    if not side.is_file():
        return None
    try:
        raw = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(raw, dict) or "format_version" not in raw:
        return None
    return _parse_config(raw, side)


def load_release_checkpoint(path: str | os.PathLike, config: EmoTalkConfig | None = None):
    """Read a released EmoTalk.pth -> (config, this library's state dict)."""
    cfg, sd = read_release_state_dict(path, config)
    return cfg, release_to_fast(sd, cfg)


# --- this library's format ----------------------------------------------------------------
def save_pretrained(state_dict: dict[str, torch.Tensor], cfg: EmoTalkConfig, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors into `directory`, each file atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, **cfg.to_dict()}
    tensors, seen = {}, set()
    for k, v in state_dict.items():  # safetensors refuses shared storage (a shared front end)
        v = v.detach().contiguous().cpu()
        tensors[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return directory


def load_pretrained(directory: str | os.PathLike):
    """Read a save_pretrained directory -> (config, state dict of memory-mapped tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(_not_a_checkpoint_folder(directory, p.name))
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not a valid config: {e}") from None
    cfg = _parse_config(raw, cfg_path)
    try:
        sd = load_file(str(w_path))  # safetensors memory-maps the file
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {w_path}: {e}") from None
    return cfg, sd


def _not_a_checkpoint_folder(folder: Path, missing: str) -> str:
    """Why a folder is not a checkpoint, and what to pass instead where it holds a .pth."""
    pth = sorted(folder.glob("*.pth"))
    fix = f": pass the file itself ({pth[0]})" if pth else ""
    return f"{folder} is not an emotalk_fast checkpoint: {missing} is missing{fix}"


def _parse_config(raw, where: Path) -> EmoTalkConfig:
    """config.json contents -> EmoTalkConfig, or a CheckpointError naming the file."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} is not a valid config: expected a JSON object")
    raw = dict(raw)
    version = raw.pop("format_version", None)
    if version is None:
        raise CheckpointError(f"{where} is not an emotalk_fast config (it has no format_version; a Hugging Face "
                              "model's config.json?): give the release's EmoTalk.pth, or a folder `emotalk-fast convert` "
                              "or `train` wrote")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version!r}, this library reads {FORMAT_VERSION}")
    try:
        return EmoTalkConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where} is not a valid config: {e}") from None


def read_config(path: str | os.PathLike) -> EmoTalkConfig:
    """A checkpoint's config without building anything (a directory's config.json, or a .pth's
    shapes read through a memory map): to check options before the model loads."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(_not_a_checkpoint_folder(path, CONFIG_NAME))
        try:
            return _parse_config(json.loads(cfg_path.read_text()), cfg_path)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path} is not a valid config: {e}") from None
    return read_release_state_dict(path)[0]


def load_any(path: str | os.PathLike, config: EmoTalkConfig | None = None):
    """A save_pretrained directory or a release .pth -> (config, fast state dict)."""
    path = Path(path)
    if path.is_dir():
        return load_pretrained(path)
    return load_release_checkpoint(path, config)
