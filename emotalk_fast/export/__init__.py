"""Graphs for other runtimes: the model for clips of one length (onnx_export) and one hop of a
live stream with its states explicit (onnx_stream)."""
