"""Prometheus metrics for `serve` (a registry per server, exposed over HTTP when asked)."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# Engine steps take ~10 ms (mini, GPU) to seconds (release size, CPU).
HOP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.live_streams = Gauge("emotalk_live_streams", "Streams open on the engine", registry=r)
        self.streams = Counter("emotalk_streams", "Streams started (header accepted)", registry=r)
        self.hop_seconds = Histogram("emotalk_hop_seconds", "Compute time of one engine step (all streams "
                                     "advanced in it)", buckets=HOP_BUCKETS, registry=r)
        self.hop_batch = Histogram("emotalk_hop_batch_streams", "Streams advanced per engine step",
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.frames_out = Counter("emotalk_frames_out", "Blendshape frames sent", registry=r)
        self.bytes_out = Counter("emotalk_bytes_out", "Serialized response bytes sent", registry=r)
        self.errors = Counter("emotalk_errors", "Streams ended by an error", ["kind"], registry=r)
        self.backlog = Histogram("emotalk_stream_backlog_seconds", "Per reply, the stream's audio received but not "
                                 "yet animated beyond its algorithmic latency (hop + lookahead): for a client at "
                                 "speaking pace, how far its frames run behind real time", buckets=HOP_BUCKETS,
                                 registry=r)

    def observe_step(self, seconds: float, batch: int) -> None:
        self.hop_seconds.observe(seconds)
        self.hop_batch.observe(batch)

    def expose(self, host: str, port: int):
        """Serve /metrics on host:port; returns the HTTP server (call .shutdown() to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
