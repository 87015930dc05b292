"""The EmoTalk training loop: one process, or data-parallel under torchrun.

    python -m emotalk_fast.training.cli train DATA OUT --preset tiny --steps 200
    torchrun --nproc_per_node 8 -m emotalk_fast.training.cli train DATA OUT --init EmoTalk.pth

`OUT` receives, rank 0 only, each file written atomically (temp file + os.replace):
- `EmoTalk.pth`: release-layout state dict (weight norm as `weight_g`/`weight_v`), loadable by
  the release code and by `emotalk_fast.model.checkpoint.load_release_checkpoint`;
- `config.json` + `model.safetensors`: the same weights as an emotalk_fast directory
  (`Animator.from_pretrained(OUT)`), whose config also records head counts, which a bare
  .pth cannot;
- `train_state.pt`: model, optimiser, scheduler, every rank's RNG states and the step, for an
  exact resume (`resume=True`);
- `metrics.jsonl`: one line per logged step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.errors import InvalidInput
from emotalk_fast.files import atomic_write

from .config import TrainConfig
from .data import PairDataset, scan_clips
from .losses import TERMS, combine, item_terms
from .reference import EmoTalkReference, load_release_weights

log = logging.getLogger("emotalk_fast.training")

RELEASE_NAME = "EmoTalk.pth"
STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"


# --- model set-up ---------------------------------------------------------------------------
def release_state_dict(model: EmoTalkReference) -> dict[str, torch.Tensor]:
    """The model's weights as a release `EmoTalk.pth` state dict: the release's key names
    (`weight_g`/`weight_v`) and order, float32 on the CPU, checked against the manifest."""
    own = ckpt.rename_weight_norm(
        {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()})
    ckpt.check_release_state_dict(own, model.cfg)
    order = [k for k, _ in ckpt.release_manifest(model.cfg)]
    return {k: own[k] for k in order}


def build_model(cfg: TrainConfig, model_config: EmoTalkConfig | None = None) -> EmoTalkReference:
    """Random weights (seeded module initialisation) or a release checkpoint to fine-tune;
    `model_config` (from a training state) skips reading the checkpoint."""
    if model_config is None and cfg.init_checkpoint:
        model_config, sd = ckpt.read_release_state_dict(cfg.init_checkpoint)
        model = EmoTalkReference(model_config)
        load_release_weights(model, sd)
    else:
        torch.manual_seed(cfg.seed)
        model = EmoTalkReference(model_config or EmoTalkConfig.from_name(cfg.preset))
    set_dropout(model, cfg.dropout, cfg.layerdrop)
    freeze_front_ends(model)
    return model


def freeze_front_ends(model: EmoTalkReference) -> None:
    """Freeze both CNN feature encoders (as the paper does) and the tensors training never
    reaches (the CTC heads and SpecAugment embeddings kept for the release layout)."""
    for w2v in (model.audio_encoder_cont, model.audio_encoder_emo.wav2vec2):
        w2v.freeze_feature_encoder()
        for p in (*w2v.lm_head.parameters(), w2v.masked_spec_embed):
            p.requires_grad_(False)


def set_dropout(model: nn.Module, p: float, layerdrop: float = 0.0) -> None:
    """Set every dropout probability (modules and attention-probability dropouts) to `p`."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):  # nn.MultiheadAttention, HF attention
            m.dropout = p
    for w2v in (model.audio_encoder_cont, model.audio_encoder_emo.wav2vec2):
        w2v.config.layerdrop = layerdrop


class PairStep(nn.Module):
    """One training forward over a list of items -> loss (sums [4], counts [4]).

    Items of equal shapes run as one batch through the released training forward; unpaired
    items run the plain inference forward (their cross reconstruction is their self one).
    """

    def __init__(self, model: EmoTalkReference, amp: bool):
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, items: list[dict]):
        device = next(self.model.parameters()).device
        groups: dict[tuple, list[dict]] = {}
        for it in items:
            key = (len(it["input12"]), len(it["input21"]), len(it["target11"]), len(it["target12"]), it["paired"])
            groups.setdefault(key, []).append(it)
        sums, counts = torch.zeros(4, device=device), torch.zeros(4, device=device)
        for (_, _, t11, t12, paired), group in groups.items():

            def stack(key: str) -> torch.Tensor:
                return torch.stack([it[key] for it in group]).to(device)

            level = torch.tensor([it["level"] for it in group], device=device)
            person = torch.tensor([it["person"] for it in group], device=device)
            emotion = torch.tensor([it["emotion"] for it in group], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda"):
                if paired:
                    out11, out12, logits = self.model(stack("input12"), stack("input21"), t11, t12, level, person)
                else:
                    pred = self.model.predict(stack("input12"), level, person)
                    out12, logits = pred["blendshapes"], pred["emotion_logits"]
                    out11 = out12
            target12 = stack("target12")
            target11 = stack("target11") if paired else target12
            s, c = item_terms(out11, out12, logits, target11, target12, emotion,
                              torch.full((len(group),), paired, device=device))
            sums, counts = sums + s, counts + c
        return sums, counts


# --- distributed ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Read torchrun's env vars (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT); NCCL on CUDA,
    gloo on CPU. A plain `python` run is world size 1 and starts no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        dev = torch.device(f"cuda:{d.local_rank}" if device in ("auto", "cuda") else device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, dev


def _all_reduce(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(x)
    return x


# --- state and checkpoints --------------------------------------------------------------------
def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain Python values: they pickle through
    all_gather_object and load with torch.load(weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state().numpy().tobytes(),
             "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    def to_tensor(b: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(b), dtype=torch.uint8)

    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(to_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([to_tensor(b) for b in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _atomic_save(obj, path: Path) -> None:
    """torch.save that a reader (or a crash) sees whole or not at all."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(model: EmoTalkReference, out: Path, export_pretrained: bool = True) -> Path:
    """Write EmoTalk.pth (+ config.json and model.safetensors) into `out`, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    sd = release_state_dict(model)
    _atomic_save(sd, out / RELEASE_NAME)
    if export_pretrained:
        ckpt.save_pretrained(ckpt.release_to_fast(sd, model.cfg), model.cfg, out)
    return out / RELEASE_NAME


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


@dataclass
class TrainResult:
    step: int  # optimiser steps done
    history: list[dict]  # the logged metrics (rank 0)
    checkpoint: Path | None  # EmoTalk.pth (rank 0)


# --- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None) -> TrainResult:
    """Train for `cfg.steps` steps (from the saved state if `resume`). `stop_at` ends the run
    after that global step with a full checkpoint, as a planned interruption would."""
    starts_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        return _train(cfg, resume, stop_at)
    finally:
        # The group this run started ends with it: one left to the interpreter's exit can abort
        # the process as gloo's threads are torn down ("terminate called without an active
        # exception", seen in CI after a finished run).
        if starts_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, stop_at: int | None) -> TrainResult:
    d, device = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    if cfg.batch_size % d.world:
        raise InvalidInput(f"batch_size {cfg.batch_size} is not divisible by the world size {d.world}")
    per_rank = cfg.batch_size // d.world

    state = None
    if not resume and (out / STATE_NAME).is_file():
        raise InvalidInput(f"{out} already holds a training run ({STATE_NAME}): add --resume to continue it "
                           "(resume=True in Python), or choose another output directory")
    if not resume and d.main and (out / METRICS_NAME).is_file():
        (out / METRICS_NAME).unlink()  # left by a run that died before its first checkpoint
    if resume:
        path = out / STATE_NAME
        if not path.is_file():
            raise InvalidInput(f"cannot resume: {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        changed = {k: (v, cfg.to_dict()[k]) for k, v in state["train_config"].items()
                   if k not in ("log_every", "checkpoint_every", "num_workers", "device")
                   and cfg.to_dict().get(k) != v}
        if changed:
            log.warning("resuming with a changed configuration (saved -> now): %s", changed)
    model_config = EmoTalkConfig.from_dict(state["model_config"]) if state else None
    model = build_model(cfg, model_config).to(device)
    if state:
        model.load_state_dict(state["model"])

    clips = scan_clips(cfg.data_dir, cfg.emotion_map, model.cfg.emotion_labels, cfg.max_crop_frames,
                       cfg.on_mismatch)
    dataset = PairDataset(clips, cfg.seed, cfg.cross, cfg.default_level, cfg.default_person, cfg.random_crop_s)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // per_rank
    if steps_per_epoch < 1:
        raise InvalidInput(f"{len(dataset)} clips cannot fill one global batch of {cfg.batch_size}")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    step = 0
    seed_everything(cfg.seed + d.rank)  # dropout masks differ per rank, as they should
    if state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        rngs = state["rng"]
        if len(rngs) == d.world:
            set_rng_state(rngs[d.rank])
        else:
            log.warning("resuming on %d ranks from a %d-rank state: RNG streams are reseeded", d.world, len(rngs))
            seed_everything(cfg.seed + d.rank + 7919 * step)
        if d.main:
            log.info("resumed from %s at step %d", out / STATE_NAME, step)

    stepper = PairStep(model, cfg.amp)
    if d.world > 1:
        stepper = nn.parallel.DistributedDataParallel(
            stepper, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.layerdrop > 0)
    model.train()
    if d.main:
        n_train = sum(p.numel() for p in params)
        log.info("training %.2f M of %.2f M parameters on %d clips (%d with cross pairs), %d rank(s) x %d "
                 "per step, %d steps/epoch, device %s", n_train / 1e6,
                 sum(p.numel() for p in model.parameters()) / 1e6, len(dataset), dataset.num_paired(),
                 d.world, per_rank, steps_per_epoch, device)

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    history, t_last, step_last = [], time.perf_counter(), step
    paces = [(t_last, step)]  # (time, step) at each report: the time left follows the recent pace
    ckpt_path = None
    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [[(i, epoch) for i in order[j * per_rank:(j + 1) * per_rank]]
                   for j in range(offset, min(steps_per_epoch, offset + end - step))]
        # Its own generator: a loader iterator draws a seed, which must not advance the global
        # RNG (dropout's), or a resumed run would diverge from an uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=list,
                                             num_workers=cfg.num_workers,
                                             generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for items in loader:
            counts_local = torch.tensor([[it["paired"], 1, 1, it["emotion"] >= 0] for it in items],
                                        dtype=torch.float32).sum(0).to(device)
            counts = _all_reduce(counts_local, d)
            sums, _ = stepper(items)
            loss, means = combine(sums, counts, cfg.loss)
            opt.zero_grad(set_to_none=True)
            (loss * d.world).backward()  # DDP averages gradients over ranks; the loss is a global mean
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            sched.step()
            step += 1

            if step % cfg.log_every == 0 or step == end or step == 1:
                report = _all_reduce(torch.cat([loss.detach()[None], means.detach()]), d).tolist()
                now = time.perf_counter()
                rec = {"step": step, "loss": report[0], **dict(zip(TERMS, report[1:])),
                       "lr": sched.get_last_lr()[0], "steps_per_s": (step - step_last) / max(now - t_last, 1e-9)}
                if grad_norm is not None:
                    rec["grad_norm"] = float(grad_norm)
                t_last, step_last = now, step
                paces.append((now, step))
                if d.main:
                    history.append(rec)
                    log.info("step %d/%d  loss %.4f  cross %.4f  self %.4f  vel %.4f  cls %.4f  lr %.2e  %.2f steps/s  "
                             "%s left", step, cfg.steps, rec["loss"], rec["cross"], rec["self"], rec["velocity"],
                             rec["cls"], rec["lr"], rec["steps_per_s"],
                             _duration(time_left(paces, now, step, end)))
                    out.mkdir(parents=True, exist_ok=True)
                    with open(out / METRICS_NAME, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if step % cfg.checkpoint_every == 0 or step == end:
                ckpt_path = _checkpoint(model, opt, sched, step, cfg, out, d)
    if ckpt_path is None:  # nothing left to do (resumed at the end): still leave a checkpoint
        ckpt_path = _checkpoint(model, opt, sched, step, cfg, out, d)
    return TrainResult(step, history, ckpt_path if d.main else None)


def _checkpoint(model, opt, sched, step: int, cfg: TrainConfig, out: Path, d: Dist) -> Path:
    rngs = [rng_state()]
    if d.world > 1:
        rngs = [None] * d.world
        dist.all_gather_object(rngs, rng_state())
    path = out / RELEASE_NAME
    if d.main:
        save_checkpoint(model, out, cfg.export_pretrained)
        _atomic_save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "rng": rngs, "train_config": cfg.to_dict(),
                      "model_config": model.cfg.to_dict()}, out / STATE_NAME)
        log.info("step %d: wrote %s and %s", step, path, out / STATE_NAME)
    if d.world > 1:
        dist.barrier()
    return path


def time_left(paces: list[tuple[float, int]], now: float, step: int, end: int, recent: int = 10) -> float:
    """Seconds to step `end` at the pace of the last `recent` reports (`paces`: (time, step) at
    each, `now`/`step` the latest): a machine that got busier (or quieter) shows in it within a
    few reports, and a single report's noise does not swing it."""
    t0, s0 = paces[max(0, len(paces) - 1 - recent)]
    if step <= s0:
        return 0.0 if step >= end else float("inf")
    return (end - step) * (now - t0) / (step - s0)


def _duration(seconds: float) -> str:
    """A time estimate as a person reads it: 45 s, 12 min, 2.5 h."""
    if seconds == float("inf"):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
