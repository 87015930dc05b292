"""How and where the model runs: device, dtype, threads and decoder backend; int8 and OpenVINO
encoders; ONNX export."""
