"""`emotalk-fast serve`: the Audio2Face-3D gRPC service on the batched streaming engine.

protocol.py  the wire messages (built from protos/) and the name mappings
worker.py    the engine on its own thread, fed by the event loop
server.py    ProcessAudioStream sessions, health, TLS, graceful stop: A2FServer
metrics.py   Prometheus counters and histograms
cli.py       the serve, send and health commands (argparse only until one runs)
"""
