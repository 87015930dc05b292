"""Previews: the 2D face moves as the ARKit channels say (jawOpen opens the mouth, eyeBlink closes
the lids, browInnerUp lifts the brows, smiles widen the mouth), the video's frames follow the
curves, and PNG / MP4 (with sound) / GIF files come out, from Python and from the command line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("matplotlib")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from emotalk_fast import BLENDSHAPE_NAMES, Animator  # noqa: E402
from emotalk_fast.io.preview import FACE_SIZE, face, video_frames  # noqa: E402
from helpers import espeak_speech  # noqa: E402

MOUTH = (slice(200, 330), slice(100, 260))  # rows, columns of the 360-pixel face
EYE = (slice(120, 180), slice(90, 150))
BROW = (slice(80, 140), slice(90, 160))


def dark(img, region, below=90):
    """Pixels darker than `below` in every channel: the open mouth's inside."""
    a = np.asarray(img)[region]
    return int((a.max(axis=-1) < below).sum())


def white(img, region):
    return int((np.asarray(img)[region].min(axis=-1) > 250).sum())


def brow_row(img):
    """Mean row of the brow's dark-brown pixels."""
    a = np.asarray(img)[BROW].astype(int)
    mask = (abs(a[..., 0] - 80) < 12) & (abs(a[..., 1] - 55) < 12) & (abs(a[..., 2] - 40) < 12)
    return np.nonzero(mask)[0].mean() + BROW[0].start


def mouth_width(img):
    a = np.asarray(img)[MOUTH].astype(int)
    lips = (abs(a[..., 0] - 190) < 10) & (abs(a[..., 1] - 80) < 10)
    cols = np.nonzero(lips.any(axis=0))[0]
    return cols.max() - cols.min()


def test_the_face_follows_the_channels():
    rest = face({})
    assert dark(face({"jawOpen": 1.0}), MOUTH) > dark(face({"jawOpen": 0.3}), MOUTH) + 500 > 500
    assert dark(face({"jawOpen": 1.0, "mouthClose": 1.0}), MOUTH) < dark(face({"jawOpen": 1.0}), MOUTH) / 4
    assert white(rest, EYE) > 1000 and white(face({"eyeBlinkRight": 1.0}), EYE) == 0  # the viewer's left eye
    assert white(face({"eyeBlinkLeft": 1.0}), EYE) == white(rest, EYE)  # the other eye is untouched
    assert white(face({"eyeWideRight": 1.0}), EYE) > white(rest, EYE)
    assert brow_row(face({"browInnerUp": 1.0})) < brow_row(rest) - 3
    assert brow_row(face({"browDownRight": 1.0})) > brow_row(rest) + 3
    smile = {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}
    assert mouth_width(face(smile)) > mouth_width(rest) + 15 > mouth_width(face({"mouthPucker": 1.0})) + 15
    assert face({}).size == (FACE_SIZE, FACE_SIZE)


def test_video_frames_follow_the_curves():
    t = 12
    curves = np.zeros((t, 52), np.float32)
    jaw, blink = BLENDSHAPE_NAMES.index("jawOpen"), BLENDSHAPE_NAMES.index("eyeBlinkRight")
    curves[:, jaw] = np.linspace(0, 1, t)
    curves[t // 2 :, blink] = 1.0
    frames = list(video_frames(curves, BLENDSHAPE_NAMES))
    assert len(frames) == t and frames[0].shape[0] >= FACE_SIZE
    opening = [dark(f[:FACE_SIZE, :FACE_SIZE], MOUTH) for f in frames]
    assert all(b >= a for a, b in zip(opening, opening[1:])) and opening[-1] > opening[0] + 500
    eye = [white(f[:FACE_SIZE, :FACE_SIZE], EYE) for f in frames]
    assert min(eye[: t // 2]) > 1000 and max(eye[t // 2 :]) == 0
    # the cursor moves right over the curves
    cursor = [np.nonzero((f[:, FACE_SIZE:, 0] > 200) & (f[:, FACE_SIZE:, 1] < 60))[1].mean() for f in frames]
    assert all(b > a for a, b in zip(cursor, cursor[1:]))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("preview")
    speech = espeak_speech("Look at the face while it speaks.", rate=22050)
    soundfile.write(d / "speech.wav", speech, 22050)
    anim = Animator.from_config("tiny", device="cpu").animate(d / "speech.wav")
    return d, anim


def test_png_mp4_gif_from_python(clip):
    d, anim = clip
    fig = anim.plot(audio=d / "speech.wav")
    assert len(fig.axes) == 4  # audio, mouth, brows/eyes, emotion timeline
    png = anim.save_preview(d / "a.png", audio=d / "speech.wav")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mp4 = anim.save_preview(d / "a.mp4", audio=d / "speech.wav")
    meta = next(imageio_ffmpeg.read_frames(str(mp4)))
    assert meta["audio_codec"] == "aac" and meta["fps"] == 30.0
    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == anim.num_frames
    from PIL import Image

    gif = anim.save_preview(d / "a.gif")
    assert Image.open(gif).n_frames == (anim.num_frames + 1) // 2  # 15 fps
    with pytest.raises(ValueError, match="must end in .png, .mp4 or .gif"):
        anim.save_preview(d / "a.avi")


def test_preview_command(clip):
    d, anim = clip
    anim.save(d / "anim.csv")
    script = str(Path(sys.executable).with_name("emotalk-fast"))
    r = subprocess.run([script, "preview", str(d / "anim.csv"), "--audio", str(d / "speech.wav"), "-o",
                        str(d / "cli.mp4")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert imageio_ffmpeg.count_frames_and_secs(str(d / "cli.mp4"))[0] == anim.num_frames
    r = subprocess.run([script, "preview", str(d / "anim.csv"), "-o", str(d / "x.webm")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "must end in .png, .mp4 or .gif" in r.stderr
