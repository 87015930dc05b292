"""Measuring and looking: the benchmark, timing helpers, streaming against offline, previews."""
