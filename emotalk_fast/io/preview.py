"""Pictures of an animation: a PNG of the curves that matter, and a video of a simple 2D face
driven by the ARKit channels beside a cursor moving over those curves (needs the [preview]
extra: matplotlib, and imageio-ffmpeg for MP4).

    anim.plot(audio="speech.wav")                       # a matplotlib Figure
    anim.save_preview("speech.png" | "speech.mp4" | "speech.gif", audio="speech.wav")

The face is drawn, not rendered from a rig: brows (browInnerUp, browOuterUp*, browDown*), lids
(eyeBlink*, eyeWide*, eyeSquint*), gaze (eyeLook*), jaw (jawOpen, jawLeft/Right) and the mouth
(mouthClose, smile, frown, stretch, pucker, funnel, lower-lip down, upper-lip up). It shows at
a glance whether the curves move the right parts at the right time.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .audio import load_waveform
from ..files import require_folder
from ..model.config import FPS
from ..errors import InvalidInput, install_hint

# The curves the plot shows: (label, channels averaged).
CURVES = (
    ("jaw open", ("jawOpen",)),
    ("mouth close", ("mouthClose",)),
    ("funnel / pucker", ("mouthFunnel", "mouthPucker")),
    ("smile", ("mouthSmileLeft", "mouthSmileRight")),
    ("lower lip down", ("mouthLowerDownLeft", "mouthLowerDownRight")),
    ("brow inner up", ("browInnerUp",)),
    ("brow down", ("browDownLeft", "browDownRight")),
    ("blink", ("eyeBlinkLeft", "eyeBlinkRight")),
    ("eye wide", ("eyeWideLeft", "eyeWideRight")),
)
FACE_SIZE = 360  # pixels, square
PLOT_SIZE = (720, 360)  # the curves beside the face in a video


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"previews need matplotlib ({e}): {install_hint('preview')}") from None
    return plt


def _channels(blendshapes: np.ndarray, names) -> dict[str, np.ndarray]:
    return {n: blendshapes[:, i] for i, n in enumerate(names)}


def _plot_curves(ax, t: np.ndarray, channels: dict, curves, linewidth: float) -> None:
    """One line per (label, channels) of `curves`: the mean of the channels the animation has."""
    for label, keys in curves:
        present = [channels[k] for k in keys if k in channels]
        if present:
            ax.plot(t, np.mean(present, axis=0), label=label, linewidth=linewidth)


def plot(blendshapes: np.ndarray, names, fps: float = FPS, audio: np.ndarray | None = None,
         sample_rate: int | None = None, emotion_timeline=None, size=(10, 7)):
    """Waveform (when given), the curves that matter, and the emotion timeline -> Figure."""
    plt = _matplotlib()
    ch = _channels(np.asarray(blendshapes, np.float32), names)
    t = np.arange(len(blendshapes)) / fps
    rows = [r for r in ("audio", "mouth", "upper", "emotion")
            if (r != "audio" or audio is not None) and (r != "emotion" or emotion_timeline)]
    heights = {"audio": 1, "mouth": 2, "upper": 2, "emotion": 1.2}
    fig, axes = plt.subplots(len(rows), 1, figsize=size, sharex=True,
                             gridspec_kw={"height_ratios": [heights[r] for r in rows]})
    axes = np.atleast_1d(axes)
    for ax, row in zip(axes, rows):
        if row == "audio":
            wave = np.asarray(audio, np.float32)
            ax.plot(np.arange(len(wave)) / sample_rate, wave, color="0.4", linewidth=0.5)
            ax.set_ylabel("audio")
        elif row in ("mouth", "upper"):
            _plot_curves(ax, t, ch, CURVES[:5] if row == "mouth" else CURVES[5:], linewidth=1.2)
            ax.set_ylabel("mouth, jaw" if row == "mouth" else "brows, eyes")
            ax.legend(loc="upper right", fontsize=7, ncol=3)
            ax.grid(alpha=0.3)
        else:
            labels = list(emotion_timeline[0][1])
            starts = [s for s, _ in emotion_timeline]
            probs = np.array([[p[label] for label in labels] for _, p in emotion_timeline])
            # one span (a clip-level emotion) covers the whole clip
            last = starts[-1] + (starts[1] - starts[0]) if len(starts) > 1 else len(blendshapes) / fps
            ax.stackplot(starts + [max(last, starts[-1] + 1 / fps)],
                         np.vstack([probs, probs[-1:]]).T, labels=labels, step="post", alpha=0.85)
            ax.set_ylim(0, 1)
            ax.set_ylabel("emotion")
            ax.legend(loc="upper right", fontsize=7, ncol=len(labels))
    axes[-1].set_xlabel("seconds")
    axes[-1].set_xlim(0, max(t[-1] if len(t) else 0, 1 / fps))
    fig.tight_layout()
    return fig


def face(values: dict[str, float], size: int = FACE_SIZE):
    """One frame of the 2D face as a PIL image (values: ARKit name -> weight, missing = 0)."""
    from PIL import Image, ImageDraw

    v = {k: float(np.clip(x, 0.0, 1.0)) for k, x in values.items()}
    g = lambda name: v.get(name, 0.0)  # noqa: E731
    s = size / 360  # drawn on a 360-pixel grid
    img = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    jaw = g("jawOpen")
    jaw_x = 14 * (g("jawRight") - g("jawLeft"))
    # head: the chin drops with the jaw
    d.ellipse([70 * s, 30 * s, 290 * s, (320 + 25 * jaw) * s], fill=(236, 200, 170), outline=(120, 90, 70), width=2)
    for side, sign in (("Left", -1), ("Right", 1)):  # the character's left is the viewer's right
        cx = 180 - sign * 55
        cy = 150
        # eye opening: closed by blink and squint, widened by eyeWide
        openness = max(0.0, (1 - g(f"eyeBlink{side}")) * (1 + 0.6 * g(f"eyeWide{side}")) - 0.35 * g(f"eyeSquint{side}"))
        h = 18 * openness
        d.ellipse([(cx - 28) * s, (cy - h) * s, (cx + 28) * s, (cy + h) * s], fill=(255, 255, 255),
                  outline=(60, 40, 30), width=2)
        if h > 3:
            look_x = 10 * (g(f"eyeLookOut{side}") - g(f"eyeLookIn{side}")) * -sign
            look_y = 8 * (g(f"eyeLookDown{side}") - g(f"eyeLookUp{side}"))
            r = min(9.0, h)
            d.ellipse([(cx + look_x - r) * s, (cy + look_y - r) * s, (cx + look_x + r) * s, (cy + look_y + r) * s],
                      fill=(60, 90, 140))
        else:
            d.line([(cx - 28) * s, cy * s, (cx + 28) * s, cy * s], fill=(60, 40, 30), width=3)
        # brow: the inner end rises with browInnerUp, the outer with browOuterUp, both fall with browDown
        down = 12 * g(f"browDown{side}")
        inner = cy - 38 - 16 * g("browInnerUp") + down
        outer = cy - 36 - 16 * g(f"browOuterUp{side}") + down
        d.line([(cx + sign * -30) * s, inner * s, (cx + sign * 30) * s, outer * s], fill=(80, 55, 40), width=int(6 * s))
    # mouth: width from smile/stretch vs pucker/funnel, opening from the jaw and the lips
    mx, my = 180 + jaw_x, 245 + 10 * jaw
    smile = (g("mouthSmileLeft") + g("mouthSmileRight")) / 2
    frown = (g("mouthFrownLeft") + g("mouthFrownRight")) / 2
    half_w = 42 * (1 + 0.35 * smile + 0.3 * (g("mouthStretchLeft") + g("mouthStretchRight")) / 2
                   - 0.45 * g("mouthPucker") - 0.3 * g("mouthFunnel"))
    corner_y = my - 12 * smile + 12 * frown
    opening = max(0.0, 46 * jaw * (1 - g("mouthClose")) + 10 * g("mouthFunnel")
                  + 6 * (g("mouthLowerDownLeft") + g("mouthLowerDownRight")) / 2)
    upper = my - 4 - 5 * (g("mouthUpperUpLeft") + g("mouthUpperUpRight")) / 2
    lower = my + 4 + opening
    lips = [(mx - half_w, corner_y), (mx - half_w / 2, upper - 6), (mx, upper - 3), (mx + half_w / 2, upper - 6),
            (mx + half_w, corner_y), (mx + half_w / 2, lower + 6), (mx, lower + 8), (mx - half_w / 2, lower + 6)]
    d.polygon([(x * s, y * s) for x, y in lips], fill=(190, 80, 80), outline=(120, 40, 40))
    if opening > 1.5:
        inside = [(mx - half_w + 6, corner_y), (mx, upper + 2), (mx + half_w - 6, corner_y), (mx, lower)]
        d.polygon([(x * s, y * s) for x, y in inside], fill=(60, 20, 25))
    return img


def _curves_image(blendshapes, names, fps, size=PLOT_SIZE):
    """The mouth and eye curves, drawn once; (RGB array, x pixel of t=0, pixels per second)."""
    plt = _matplotlib()
    ch = _channels(blendshapes, names)
    t = np.arange(len(blendshapes)) / fps
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    _plot_curves(ax, t, ch, CURVES, linewidth=1)
    duration = max(t[-1] if len(t) else 0.0, 1 / fps)
    ax.set_xlim(0, duration)
    ax.set_xlabel("seconds")
    ax.legend(loc="upper right", fontsize=6, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    x0, _ = ax.transData.transform((0, 0))
    x1, _ = ax.transData.transform((duration, 0))
    plt.close(fig)
    return image, x0, (x1 - x0) / duration


def video_frames(blendshapes: np.ndarray, names, fps: float = FPS):
    """Yield one RGB frame [H, W, 3] uint8 per animation frame: the face and the curves with a cursor."""
    from PIL import Image, ImageDraw

    blendshapes = np.asarray(blendshapes, np.float32)
    curves, x0, per_second = _curves_image(blendshapes, names, fps)
    h = max(FACE_SIZE, curves.shape[0])
    base = Image.new("RGB", (FACE_SIZE + curves.shape[1], h), (255, 255, 255))
    base.paste(Image.fromarray(curves), (FACE_SIZE, 0))
    for i, row in enumerate(blendshapes):
        frame = base.copy()
        frame.paste(face(dict(zip(names, row))), (0, 0))
        x = FACE_SIZE + x0 + per_second * i / fps
        ImageDraw.Draw(frame).line([(x, 0), (x, h)], fill=(220, 30, 30), width=2)
        yield np.asarray(frame)


MAX_GIF_S = 10.0  # GIFs store every frame uncompressed in time: longer ones belong in an MP4


def save_preview(path: str | os.PathLike, blendshapes: np.ndarray, names, fps: float = FPS, audio=None,
                 sample_rate: int | None = None, emotion_timeline=None) -> Path:
    """.png: the plot; .mp4: the face + curves video (with the audio when given); .gif: the same,
    silent. `audio`: a path, or samples with their `sample_rate`."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".png", ".mp4", ".gif"):
        raise InvalidInput(f"preview {path.name} must end in .png, .mp4 or .gif")
    require_folder(path)
    if len(blendshapes) == 0:
        raise InvalidInput("the animation has no frames")
    if ext == ".gif" and len(blendshapes) / fps > MAX_GIF_S:
        raise InvalidInput(f"a GIF preview is limited to {MAX_GIF_S:g} s and this animation is "
                           f"{len(blendshapes) / fps:.1f} s (a 22 s GIF took 44 s and 744 MB to make, 25.6 MB on "
                           "disk): write an .mp4 instead")
    wave, rate = load_waveform(audio, sample_rate)
    if ext == ".png":
        plt = _matplotlib()
        fig = plot(blendshapes, names, fps, wave, rate, emotion_timeline)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    elif ext == ".gif":
        from PIL import Image

        step = max(1, round(fps / 15))  # GIF timing is in 10 ms units: 15 fps plays true
        frames = [Image.fromarray(f) for i, f in enumerate(video_frames(blendshapes, names, fps)) if i % step == 0]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 * step / fps), loop=0)
    else:
        _write_mp4(path, blendshapes, names, fps, wave, rate)
    return path


def _write_mp4(path: Path, blendshapes, names, fps, wave, rate) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(f"MP4 previews need imageio-ffmpeg ({e}): {install_hint('preview')}") from None
    frames = video_frames(blendshapes, names, fps)
    first = next(frames)
    with tempfile.TemporaryDirectory() as tmp:
        audio_path = None
        if wave is not None:
            import soundfile

            audio_path = str(Path(tmp) / "audio.wav")
            soundfile.write(audio_path, wave, rate)
        writer = imageio_ffmpeg.write_frames(str(path), (first.shape[1], first.shape[0]), fps=fps,
                                             codec="libx264", pix_fmt_out="yuv420p", macro_block_size=8,
                                             audio_path=audio_path, audio_codec="aac" if audio_path else None,
                                             ffmpeg_log_level="error")
        writer.send(None)
        writer.send(np.ascontiguousarray(first))
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
