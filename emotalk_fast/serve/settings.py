"""The service's settings, one frozen object with every default (the CLI's flags read them);
no gRPC here, so the CLI can describe `serve` without the serve extra installed."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput
from ..streaming.settings import MAX_STREAMS
from .protocol import DEFAULT_PORT


@dataclass(frozen=True)
class ServeSettings:
    """The service's own settings (the engine's are the engine's: hops, windows); the CLI's
    flags and their help take their defaults from here."""

    host: str = "127.0.0.1"  # loopback unless asked
    port: int = DEFAULT_PORT  # 0 picks a free port
    max_audio_s: float = 600.0  # longer streams end with INVALID_ARGUMENT
    idle_timeout_s: float = 30.0  # a stream sending no audio this long before end_of_audio: DEADLINE_EXCEEDED
    shutdown_grace_s: float = 30.0  # on SIGTERM, live streams get this long to finish
    max_buffered_s: float = 10.0  # a stream's audio read ahead of its frames; then reading pauses
    max_reply_bytes: int = 1 << 20  # replies are split to stay under this (clients accept 4 MiB)
    max_unread_bytes: int = 128 << 20  # a client leaving more replies unread is cut (10 min of 48 kHz fit)
    tls_cert: str | None = None  # PEM files; with client_ca, clients must present a certificate
    tls_key: str | None = None
    client_ca: str | None = None
    metrics_port: int | None = None
    # the engine `serve` builds (an A2FServer handed an engine takes that engine's)
    max_streams: int = MAX_STREAMS  # concurrent streams; more get RESOURCE_EXHAUSTED
    live_streams: int = 1  # streams that must keep up in real time: hop_ms "auto" holds this many

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise InvalidInput("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in ("max_audio_s", "idle_timeout_s", "max_buffered_s"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"--{name.replace('_s', '-s').replace('_', '-')} must be > 0")
        if self.max_streams < 1:
            raise InvalidInput(f"--max-streams must be >= 1, got {self.max_streams}")
        if not 1 <= self.live_streams <= self.max_streams:
            raise InvalidInput(f"--live-streams must be between 1 and --max-streams ({self.max_streams}), "
                               f"got {self.live_streams}")
