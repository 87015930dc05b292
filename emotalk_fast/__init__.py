"""emotalk_fast: speech -> 52 ARKit blendshapes at 30 fps with EmoTalk (ICCV 2023).

    from emotalk_fast import Animator
    anim = Animator.from_pretrained("EmoTalk.pth").animate("speech.wav", level=1, person=0)
    anim.save("speech.csv")
"""
from .animator import Animation, Animator
from .checkpoint import CheckpointError
from .config import BLENDSHAPE_NAMES, DEFAULT_EMOTION_LABELS, EmoTalkConfig
from .controls import Schedule
from .engine import EngineFull, StreamEngine
from .model import EmoTalk
from .streaming import AnimationStream

__all__ = ["Animator", "Animation", "AnimationStream", "StreamEngine", "EngineFull", "EmoTalk", "EmoTalkConfig",
           "CheckpointError", "Schedule", "BLENDSHAPE_NAMES", "DEFAULT_EMOTION_LABELS"]
__version__ = "0.1.0"
