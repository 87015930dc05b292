"""Bytes in and out: audio decoding and resampling, curve files (the Live Link Face CSV too),
previews, corpora of many inputs."""
