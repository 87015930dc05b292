"""How far a stream lands from offline animation, clip by clip, on a trained model: does the
stream tell the same emotion, and how far are its curves from offline's, relative to the
offline curves' own spread around their mean?

    python -m emotalk_fast.training.smoke_data smoke
    emotalk-fast train smoke runs/tiny --preset tiny --steps 800 --batch-size 2 --lr 1e-3 --dropout 0
    python benchmarks/stream_agreement.py --checkpoint runs/tiny --data smoke
    python benchmarks/stream_agreement.py --random-weights tiny --data smoke
    emotalk-fast train smoke runs/tiny-crops --preset tiny --steps 2000 --batch-size 2 --lr 1e-3 --dropout 0 --random-crop-s 0.5
    python benchmarks/stream_agreement.py --checkpoint runs/tiny-crops --data smoke --settings 100/2000/200
    python benchmarks/stream_agreement.py --checkpoint runs/tiny --data smoke --settings 100/2000/200 --encodings windowed,incremental

First, how many clips offline animation labels as their RAVDESS file names say (the model's
own skill). Per setting (hop / context / lookahead, and where not their defaults the emotion branch's
context / cadence and the whole-utterance limit, ms): emotion agreement (the stream's label at
the end against offline's), and the curves' mean abs deviation from offline over the offline
curves' mean abs spread, averaged over clips, and over each clip's first 900 ms and the rest;
beside it the same deviation with only the content branch windowed (the emotion branch as
offline) and with only the emotion branch windowed (on the stream's windows and cadence; the
stream's whole-utterance rule at the end aside), which says where the deviation comes from. The
first row is the clip in one window: the floor that the fixed 30 fps grid sets.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.io.audio import prepare_audio  # noqa: E402
from emotalk_fast.model.style import style_weights  # noqa: E402
from emotalk_fast.tools.measure import versions  # noqa: E402
from emotalk_fast.model.emotalk import normalize_waveform, num_frames  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402
from emotalk_fast.streaming.stream import play  # noqa: E402
from emotalk_fast.training.data import emotion_classes, parse_ravdess_name  # noqa: E402
from emotalk_fast.streaming.encoders import encode_windowed  # noqa: E402
from emotalk_fast.streaming.settings import StreamSettings  # noqa: E402


EARLY_FRAMES = 27  # the first 900 ms of a clip: a stream has heard little of the utterance yet


def clip_row(animator: Animator, x: np.ndarray, hop: int | None, context: int, lookahead: int,
             emotion_context: int | None = None, emotion_hop: int | None = None,
             whole_utterance: int | None = None, ramp: bool = False, encoding: str = "windowed") -> dict:
    """One clip at one setting (hop None: the clip in one window)."""
    offline = animator.animate(x, long_audio_s=None)
    spread = float(np.abs(offline.blendshapes - offline.blendshapes.mean(0)).mean())
    wave = torch.from_numpy(x)
    with torch.inference_mode():
        n = torch.tensor([len(x)])
        frames = [num_frames(len(x))]
        normalized = normalize_waveform(wave[None], n)
        content_off = animator.model.encode_content(normalized, n, frames)
        emotion_off, _ = animator.model.encode_emotion(normalized, n, frames)
        whole = 100 * -(-len(x) * 10 // 16000)
        both_branches = StreamSettings(hop_ms=hop or whole, lookahead_ms=lookahead, context_ms=context,
                                       emotion_hop_ms=hop or whole, ramp=ramp)  # every hop, the content's windows
        content_win, emotion_win = encode_windowed(animator.model, wave, both_branches)
        if hop is not None:  # the emotion branch on the stream's own windows and cadence
            changes = dict(emotion_context_ms=emotion_context, emotion_hop_ms=emotion_hop,
                           whole_utterance_ms=whole_utterance)
            if encoding == "incremental":  # its emotion branch runs every hop
                changes["emotion_hop_ms"] = None
            stream = animator.stream(hop_ms=hop, context_ms=context, lookahead_ms=lookahead, ramp=ramp,
                                     encoding=encoding,
                                     **{k: v for k, v in changes.items() if v is not None or k != "whole_utterance_ms"})
            _, emotion_win = encode_windowed(animator.model, wave, stream.settings)
        style = style_weights(animator.config, 1, 0, animator.dtype, animator.device)

        def deviation(content, emotion):
            out = animator.model.decode(content, emotion, *style)[0][0].float().numpy()
            return float(np.abs(out - offline.blendshapes).mean()) / spread

        row = {"content_only": deviation(content_win, emotion_off), "emotion_only": deviation(content_off, emotion_win)}
        if hop is None:
            row.update(deviation=deviation(content_win, emotion_win), agrees=None)
            return row
    streamed = play(stream, x, hop * 16)
    per_frame = np.abs(streamed - offline.blendshapes).mean(1) / spread
    row.update(deviation=float(per_frame.mean()), early=float(per_frame[:EARLY_FRAMES].mean()),
               late=float(per_frame[EARLY_FRAMES:].mean()) if len(per_frame) > EARLY_FRAMES else np.nan,
               agrees=bool(np.argmax(stream.emotion_logits) == np.argmax(offline.emotion_logits)),
               latency_ms=stream.latency_ms, emotion=f"{stream.settings.emotion_context} ms, every "
                                                      f"{stream.settings.emotion_hop} ms",
               whole=f"{stream.settings.whole_utterance_ms} ms")
    return row


def offline_labels_right(animator: Animator, clips: list[Path], audio: list[np.ndarray]) -> str:
    """How many clips offline animation labels as their RAVDESS file names say (the model's own
    skill, beside the stream's agreement with it)."""
    classes = emotion_classes(labels=animator.config.emotion_labels)
    truth = [parse_ravdess_name(c.stem) for c in clips]
    scored = [(x, classes.get(t.emotion)) for x, t in zip(audio, truth) if t is not None]
    scored = [(x, k) for x, k in scored if k is not None]
    if not scored:
        return "offline labels: no clip has a RAVDESS name"
    right = sum(int(np.argmax(animator.animate(x, long_audio_s=None).emotion_logits)) == k for x, k in scored)
    return f"offline labels right (RAVDESS names): {right} of {len(scored)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a trained model (directory or .pth)")
    model.add_argument("--random-weights", help="a preset with random weights (mini, tiny, emotalk)")
    p.add_argument("--data", required=True, help="a folder of .wav clips (the smoke set)")
    p.add_argument("--settings", default="100/2000/200,100/2000/200/2000/100,100/2000/200/2000/100/0,"
                                         "100/2000/200/4000/300,100/1000/200,100/1000/400,200/2000/400,400/2000/400",
                   help="hop/context/lookahead[/emotion context[/emotion hop[/whole utterance]]] in ms, "
                        "comma-separated (the defaults where not given)")
    p.add_argument("--ramp", action="store_true", help="each setting also with a ramp (hops of 100, 200, 400, "
                                                       "... ms first), side by side")
    p.add_argument("--encodings", default="windowed",
                   help="windowed, incremental, or both side by side (the branch-only columns are the windowed "
                        "path's decomposition)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    animator = (Animator.from_pretrained(args.checkpoint, device="cpu") if args.checkpoint else
                Animator.from_config(args.random_weights, seed=0, device="cpu"))
    clips = sorted(Path(args.data).glob("*.wav"))
    if not clips:
        raise SystemExit(f"no .wav clips in {args.data}")
    audio = [prepare_audio(c, min_samples=animator.min_samples) for c in clips]
    print(f"{args.checkpoint or 'random weights ' + args.random_weights}, {len(clips)} clips of "
          f"{np.mean([len(x) for x in audio]) / 16000:.1f} s on average; CPU {cpu_description()}, "
          f"{args.threads} threads, torch {versions()['torch']}")
    print(f"{offline_labels_right(animator, clips, audio)}\n")
    print("| hop | context | lookahead | encoding | emotion context, cadence | whole utterance | latency | emotion agrees | "
          "deviation / spread | first 900 ms | after | content branch only | emotion branch only |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    settings = [(None, 0, 0)] + [tuple(int(v) for v in s.split("/")) for s in args.settings.split(",")]
    ramps = [(s, ramp, e) for s in settings for ramp in ((False, True) if args.ramp and s[0] else (False,))
             for e in (args.encodings.split(",") if s[0] else ("windowed",))]
    for (hop, context, lookahead, *emotion), ramp, encoding in ramps:
        emotion = dict(zip(("emotion_context", "emotion_hop", "whole_utterance"), emotion), ramp=ramp,
                       encoding=encoding)
        rows = [clip_row(animator, x, hop, context, lookahead, **emotion) for x in audio]
        mean = {k: np.mean([r[k] for r in rows]) for k in ("deviation", "content_only", "emotion_only")}
        if hop is None:
            head, agrees, latency, by_time = "whole clip | - | - | - | - | -", "-", "-", "- | -"
        else:
            head = (f"{hop} ms{', ramp' if ramp else ''} | {context} ms | {lookahead} ms | {encoding} | "
                    f"{rows[0]['emotion']} | {rows[0]['whole']}")
            agrees, latency = f"{sum(r['agrees'] for r in rows)} of {len(rows)}", f"{rows[0]['latency_ms']:.0f} ms"
            by_time = f"{np.mean([r['early'] for r in rows]):.2f} | {np.nanmean([r['late'] for r in rows]):.2f}"
        print(f"| {head} | {latency} | {agrees} | {mean['deviation']:.2f} | {by_time} | {mean['content_only']:.2f} | "
              f"{mean['emotion_only']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
