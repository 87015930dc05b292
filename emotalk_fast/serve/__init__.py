"""`emotalk-fast serve`: the Audio2Face-3D gRPC service on the batched streaming engine.

protocol.py  the wire messages (built from protos/) and the name mappings
settings.py  ServeSettings: every service setting and its default (no gRPC: the CLI reads it)
session.py   one stream's state machine
worker.py    the engine on its own thread, fed by the event loop
server.py    ProcessAudioStream sessions, health, TLS, graceful stop: A2FServer
metrics.py   Prometheus counters and histograms
(the serve, send and health commands are cli/serve.py)
"""
