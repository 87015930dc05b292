"""The release demo's post-processing: Savitzky-Golay smoothing, then synthetic eye blinks."""
from __future__ import annotations

import random

import numpy as np

SMOOTH_WINDOW, SMOOTH_ORDER = 5, 2  # frames, polynomial order (the demo's savgol_filter call)
BLINK_CHANNELS = (8, 9)  # eyeBlinkLeft, eyeBlinkRight
# The demo's four 7-frame blink shapes.
BLINK_TEMPLATES = np.array([
    (0.365372, 0.950236, 0.955934, 0.916716, 0.367256, 0.119113, 0.025358),
    (0.234776, 0.909952, 0.944758, 0.777862, 0.191072, 0.235437, 0.089164),
    (0.870041, 0.949834, 0.949419, 0.695912, 0.191072, 0.072576, 0.007109),
    (0.000308, 0.556701, 0.952657, 0.942346, 0.425857, 0.148335, 0.017659),
], dtype=np.float32)
FIRST_BLINK_MAX = 60  # frames: the first blink starts in [0, 60]
BLINK_GAP = (60, 180)  # frames between blink starts, inclusive


def smooth(blendshapes: np.ndarray) -> np.ndarray:
    """Savitzky-Golay (window 5, order 2) along time; clips shorter than the window pass through."""
    if blendshapes.shape[0] < SMOOTH_WINDOW:
        return blendshapes.copy()
    from scipy.signal import savgol_filter

    return savgol_filter(blendshapes, SMOOTH_WINDOW, SMOOTH_ORDER, axis=0).astype(np.float32)


def add_blinks(blendshapes: np.ndarray, seed: int | None = None) -> np.ndarray:
    """Zero both eyeBlink channels and write 7-frame blinks at random intervals (seeded)."""
    out = blendshapes.copy()
    out[:, BLINK_CHANNELS] = 0.0
    rng = random.Random(seed)
    length = len(BLINK_TEMPLATES[0])
    start = rng.randint(0, FIRST_BLINK_MAX)
    while start < out.shape[0] - length:
        template = BLINK_TEMPLATES[rng.randint(0, len(BLINK_TEMPLATES) - 1)]
        for ch in BLINK_CHANNELS:
            out[start : start + length, ch] = template
        start += rng.randint(*BLINK_GAP)
    return out


def postprocess(blendshapes: np.ndarray, seed: int | None = None) -> np.ndarray:
    """The demo's full post-processing: smoothing, then blinks."""
    return add_blinks(smooth(blendshapes), seed)
