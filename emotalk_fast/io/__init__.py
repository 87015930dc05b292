"""Bytes in and out: audio decoding and resampling, curve files, corpora of many inputs, atomic
file writes."""
