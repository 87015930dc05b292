"""emotalk_fast: speech -> 52 ARKit blendshapes at 30 fps with EmoTalk (ICCV 2023).

    from emotalk_fast import Animator
    anim = Animator.from_pretrained("EmoTalk.pth").animate("speech.wav", level=1, person=0)
    anim.save("speech.csv")
"""
import importlib

# Each public name and the module it lives in, imported on first use (PEP 562): the network
# client and `emotalk-fast send` import parts of this package that need no torch, and should
# not pay for importing it.
_EXPORTS = {
    "Animator": "animator", "Animation": "animator", "AnimationStream": "streaming.stream",
    "StreamEngine": "streaming.engine", "EngineFull": "streaming.engine", "EmoTalk": "model.emotalk",
    "EmoTalkConfig": "model.config", "CheckpointError": "model.checkpoint", "Schedule": "model.style",
    "BLENDSHAPE_NAMES": "model.config", "DEFAULT_EMOTION_LABELS": "model.config",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
