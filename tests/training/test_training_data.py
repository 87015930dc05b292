"""Dataset reading: RAVDESS labels, the emotion table, length checks, pseudo-pair sampling."""
import logging

import numpy as np
import pytest
import soundfile as sf

from emotalk_fast.model.config import DEFAULT_EMOTION_LABELS
from emotalk_fast.model.emotalk import num_frames
from emotalk_fast.training.config import TrainConfig
from emotalk_fast.training.data import (
    ClipLabels, PairDataset, emotion_classes, load_audio, parse_ravdess_name, scan_clips,
)


def _clip(root, stem, samples, frames=None, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(str(root / f"{stem}.wav"), (0.1 * rng.standard_normal(samples)).astype(np.float32), sr,
             subtype="FLOAT")
    n16 = samples if sr == 16000 else int(np.ceil(samples * 16000 / sr))
    frames = num_frames(n16) if frames is None else frames
    np.save(root / f"{stem}.npy", rng.random((frames, 52)).astype(np.float32))


def test_parse_ravdess_name():
    assert parse_ravdess_name("03-01-05-02-01-01-12") == ClipLabels("angry", 1, 0, 11)
    assert parse_ravdess_name("03-01-02-01-02-02-01") == ClipLabels("calm", 0, 1, 0)
    assert parse_ravdess_name("WDA_BarackObama_000") is None
    with pytest.raises(ValueError, match="out-of-range"):
        parse_ravdess_name("03-01-09-01-01-01-01")
    with pytest.raises(ValueError, match="out-of-range"):
        parse_ravdess_name("03-01-01-01-01-01-25")


def test_emotion_table():
    classes = emotion_classes()
    labels = DEFAULT_EMOTION_LABELS
    assert {k: labels[v] for k, v in classes.items()} == {
        "neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
        "fearful": "fear", "disgust": "disgust", "surprised": "surprise"}
    assert labels[emotion_classes({"calm": "sad"})["calm"]] == "sad"
    with pytest.raises(ValueError, match="not classifier labels"):
        emotion_classes({"calm": "bored"})


def test_length_mismatch_crops_one_frame_and_reports(tmp_path, caplog):
    _clip(tmp_path, "03-01-01-01-01-01-01", 16000)  # exact: 30 frames
    _clip(tmp_path, "03-01-03-01-01-01-01", 16000, frames=31)  # target one frame longer
    _clip(tmp_path, "03-01-04-01-01-01-01", 16000, frames=29)  # audio one frame longer
    with caplog.at_level(logging.WARNING, logger="emotalk_fast.training"):
        clips = {c.stem: c for c in scan_clips(tmp_path)}
    assert "2 of 3 clips differ" in caplog.text
    assert clips["03-01-01-01-01-01-01"].num_frames == 30 and clips["03-01-01-01-01-01-01"].num_samples == 16000
    assert clips["03-01-03-01-01-01-01"].num_frames == 30
    c = clips["03-01-04-01-01-01-01"]
    assert c.num_frames == 29 and num_frames(c.num_samples) == 29 and c.num_samples < 16000
    ds = PairDataset(list(clips.values()), cross=False)
    for i in range(3):
        it = ds[(i, 0)]
        assert num_frames(len(it["input12"])) == len(it["target12"])


def test_length_mismatch_beyond_one_frame_errors_or_skips(tmp_path, caplog):
    _clip(tmp_path, "03-01-01-01-01-01-01", 16000)
    _clip(tmp_path, "03-01-03-01-01-01-01", 16000, frames=32)
    with pytest.raises(ValueError, match="1 clips have audio/target lengths more than 1"):
        scan_clips(tmp_path)
    with caplog.at_level(logging.WARNING, logger="emotalk_fast.training"):
        clips = scan_clips(tmp_path, on_mismatch="skip")
    assert [c.stem for c in clips] == ["03-01-01-01-01-01-01"] and "skipped 1 clips" in caplog.text
    assert len(scan_clips(tmp_path, max_crop_frames=2)) == 2


def test_bad_targets_and_missing_files(tmp_path, caplog):
    _clip(tmp_path, "a", 8000)
    sf.write(str(tmp_path / "b.wav"), np.zeros(8000, np.float32), 16000)  # no .npy
    with caplog.at_level(logging.WARNING, logger="emotalk_fast.training"):
        assert [c.stem for c in scan_clips(tmp_path)] == ["a"]
    assert "1 .wav without .npy" in caplog.text
    np.save(tmp_path / "a.npy", np.zeros((15, 51), np.float32))
    with pytest.raises(ValueError, match=r"must be \[T, 52\]"):
        scan_clips(tmp_path)


def test_other_sample_rates_are_resampled(tmp_path):
    _clip(tmp_path, "a", 8000, sr=8000)
    (clip,) = scan_clips(tmp_path)
    assert clip.num_samples == 16000 and clip.num_frames == 30
    assert load_audio(clip.wav, clip.num_samples).shape == (16000,)


def test_pseudo_pairs(tmp_path):
    """Every cross item is (s1, e2) + (s2, e1) -> target (s1, e1), one person and level."""
    k = 0
    for actor in (1, 2):
        for emotion in (1, 2, 5):
            for sentence in (1, 2):
                if actor == 2 and sentence == 2:
                    continue  # actor 2 has one sentence only: no pairs
                k += 1
                _clip(tmp_path, f"03-01-{emotion:02d}-01-{sentence:02d}-01-{actor:02d}", 8000 + 320 * k, seed=k)
    _clip(tmp_path, "hdtf_clip", 9000)
    clips = scan_clips(tmp_path)
    ds = PairDataset(clips, seed=1, default_level=1, default_person=0)
    by_stem = {c.stem: c for c in clips}
    assert ds.num_paired() == 6
    seen = set()
    for epoch in range(4):
        for i, clip in enumerate(clips):
            it = ds[(i, epoch)]
            a12, a21, b11 = (by_stem[s].labels for s in it["stems"])
            if clip.stem == "hdtf_clip":
                assert not it["paired"] and it["emotion"] == -1 and (it["level"], it["person"]) == (1, 0)
                continue
            if a12.person == 1:  # actor 2
                assert not it["paired"] and it["stems"] == (clip.stem,) * 3
                continue
            assert it["paired"]
            assert a12.person == a21.person == b11.person == it["person"]
            assert a12.level == a21.level == b11.level == it["level"]
            assert a21.sentence != a12.sentence == b11.sentence
            assert a21.emotion != a12.emotion and b11.emotion == a21.emotion
            assert it["emotion"] == by_stem[it["stems"][1]].emotion_class
            assert len(it["target11"]) == by_stem[it["stems"][2]].num_frames
            assert len(it["input21"]) == by_stem[it["stems"][1]].num_samples
            seen.add(it["stems"])
            again = ds[(i, epoch)]
            assert again["stems"] == it["stems"]  # deterministic per (index, epoch)
    assert len(seen) > 6  # partners vary over epochs
    assert PairDataset(clips, cross=False).num_paired() == 0


def test_random_crops_cut_every_clip_of_an_item_to_matching_spans(tmp_path):
    """random_crop_s: each clip of an item is a random span, its audio exactly as long as its
    targets, at least random_crop_s long (whole when shorter); target11 at the anchor's fractions."""
    lengths = {}
    for k, (emotion, sentence) in enumerate([(1, 1), (1, 2), (5, 1), (5, 2)]):
        stem = f"03-01-{emotion:02d}-01-{sentence:02d}-01-01"
        _clip(tmp_path, stem, 16000 + 4000 * k, seed=k)  # 30, 38, 45, 53 frames
        lengths[stem] = num_frames(16000 + 4000 * k)
    _clip(tmp_path, "short", 4000)  # 8 frames: shorter than a crop, stays whole
    clips = scan_clips(tmp_path)
    whole, cropped = PairDataset(clips, seed=3), PairDataset(clips, seed=3, random_crop_s=0.5)
    starts = set()
    for epoch in range(6):
        for i, clip in enumerate(clips):
            it, cut = whole[(i, epoch)], cropped[(i, epoch)]
            assert cut["stems"] == it["stems"]  # the partners are drawn as without crops
            full12 = it["input12"].numpy()
            for audio, target in (("input12", "target12"), ("input21", None)):
                n = num_frames(len(cut[audio]))
                assert 15 <= n or n == num_frames(len(it[audio]))
                if target:
                    assert n == len(cut[target])
            t12, t11 = len(cut["target12"]), len(cut["target11"])
            assert abs(t11 / lengths.get(cut["stems"][2], 8) - t12 / lengths.get(clip.stem, 8)) < 0.05
            # the span is a slice of the clip: its samples and targets appear in the whole
            first = int(np.flatnonzero(full12 == cut["input12"][0].item())[0])
            assert np.array_equal(full12[first:first + len(cut["input12"])], cut["input12"].numpy())
            frame = round(first * 30 / 16000)
            assert np.array_equal(it["target12"][frame:frame + t12].numpy(), cut["target12"].numpy())
            starts.add((clip.stem, first))
            again = cropped[(i, epoch)]
            assert np.array_equal(again["input12"].numpy(), cut["input12"].numpy())  # deterministic
        assert num_frames(len(cropped[(clips.index(next(c for c in clips if c.stem == "short")), epoch)]
                              ["input12"])) == 8
    assert len(starts) > 2 * len(clips)  # the spans vary over epochs
    with pytest.raises(ValueError, match="random_crop_s"):
        TrainConfig(data_dir=str(tmp_path), output_dir=str(tmp_path / "run"), preset="tiny", random_crop_s=-1)
