"""Reference PyTorch EmoTalk in the release checkpoint layout, and its training code."""
