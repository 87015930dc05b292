"""Encoder backends: how the two wav2vec2 encoders run (PyTorch, int8, OpenVINO, ONNX Runtime),
one module each, behind streaming.backend.EncoderBackend; registry.py resolves a name once."""
