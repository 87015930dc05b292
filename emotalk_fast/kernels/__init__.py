"""Triton kernels used by emotalk_fast. Each kernel file knows nothing of EmoTalk."""
