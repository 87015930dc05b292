"""`emotalk-fast train` and `emotalk-fast eval`.

Only argparse and the training config (no torch) are imported here, so `emotalk_fast.cli` can
register these subcommands cheaply; the handlers import the training code when they run. The
train options are TrainConfig's `option(...)` fields: their defaults and help live there.
Standalone (and under torchrun): `python -m emotalk_fast.training.cli train|eval ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from emotalk_fast.errors import InvalidInput, install_hint

from .config import DEFAULT_EMOTION_MAP, LossWeights, TrainConfig


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser("train", help="train or fine-tune EmoTalk (single process or under torchrun)")
    t.add_argument("data_dir", help="clips: <stem>.wav (16 kHz) + <stem>.npy [T, 52] at 30 fps")
    t.add_argument("output_dir", help="checkpoints (EmoTalk.pth, config.json, model.safetensors), train_state.pt")
    defaults = TrainConfig.__dataclass_fields__
    src = t.add_mutually_exclusive_group()
    src.add_argument("--preset", default=defaults["preset"].default,
                     help="model size for random weights: emotalk, mini, tiny (default %(default)s)")
    src.add_argument("--init", dest="init_checkpoint", default=None, help="release-layout .pth to fine-tune")
    # every TrainConfig field declared with `option(...)`, with its default and help
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        t.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       choices=f.metadata["choices"], help=f.metadata["help"] + " (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/train_state.pt")
    t.add_argument("--self-only", action="store_true", help="no cross reconstruction (e.g. unlabelled data)")
    loss = LossWeights()
    t.add_argument("--loss-weights", default=",".join(f"{w:g}" for w in loss.as_tuple()),
                   help="cross,self,velocity,cls (default %(default)s: the paper's)")
    t.add_argument("--emotion-map", action="append", default=[], metavar="EMOTION=LABEL",
                   help="override one row of the RAVDESS->classifier table, e.g. calm=sad (repeatable)")
    t.add_argument("--no-amp", action="store_true", help="float32 on CUDA too (default: bf16 autocast)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's, one per core; 1 on a small shared machine)")
    t.set_defaults(func=run_train)
    return t


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("eval", help="blendshape and vertex errors of a checkpoint on a dataset")
    e.add_argument("checkpoint", help="a training output directory or a release-layout EmoTalk.pth")
    e.add_argument("data_dir", help="clips to score: <stem>.wav (16 kHz) + <stem>.npy [T, 52] at 30 fps")
    e.add_argument("--basis", default=None,
                   help=".npz with neutral [V,3], deltas [52,V,3], lip_indices, eye_indices (LVE/EVE)")
    e.add_argument("--preset", default=None, help="model config for a bare .pth with non-release head counts")
    e.add_argument("--output", default=None, help="write the full report (per channel, per clip) as JSON")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's, one per core)")
    e.set_defaults(func=run_eval)
    return e


def register(subparsers) -> None:
    add_train_parser(subparsers)
    add_eval_parser(subparsers)


def _emotion_map(pairs: list[str]) -> dict[str, str]:
    table = dict(DEFAULT_EMOTION_MAP)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise InvalidInput(f"--emotion-map takes EMOTION=LABEL, got {pair!r}")
        table[key.strip()] = value.strip()
    return table


def train_config_from_args(args) -> TrainConfig:
    try:
        weights = [float(x) for x in args.loss_weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 4:
        raise InvalidInput(f"--loss-weights takes four numbers cross,self,velocity,cls, got {args.loss_weights!r}")
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if "help" in f.metadata}
    return TrainConfig(
        data_dir=args.data_dir, output_dir=args.output_dir, preset=args.preset,
        init_checkpoint=args.init_checkpoint, amp=not args.no_amp, cross=not args.self_only,
        loss=LossWeights(*weights), emotion_map=_emotion_map(args.emotion_map), **options,
    )


def _setup_logging() -> None:
    import logging
    import os

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


def _require_transformers() -> None:
    """Training and the reference model build on Hugging Face transformers (an extra)."""
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise InvalidInput(f"training needs transformers ({e}): {install_hint('training')}") from None


def run_train(args) -> None:
    from ..runtime.threads import set_threads

    set_threads(args.threads, "--threads")
    _require_transformers()
    from .train import train

    _setup_logging()
    result = train(train_config_from_args(args), resume=args.resume)
    if result.checkpoint is not None:
        print(f"trained {result.step} steps; checkpoint {result.checkpoint}")


def run_eval(args) -> None:
    from ..runtime.threads import set_threads

    set_threads(args.threads, "--threads")
    _require_transformers()
    from .evaluate import evaluate_checkpoint

    _setup_logging()
    report = evaluate_checkpoint(args.checkpoint, args.data_dir, args.basis, args.preset, args.device, args.output)
    summary = {k: v for k, v in report.items() if k not in ("per_clip", "mse_per_channel", "mae_per_channel")}
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="emotalk-fast", description="EmoTalk training and evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:
        print(f"emotalk-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
