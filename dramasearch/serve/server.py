"""Run the service under uvicorn, with a graceful stop on SIGTERM / SIGINT.

On a signal uvicorn stops accepting connections, lets requests in flight finish (at most
`shutdown_timeout` seconds), then runs the app's lifespan end, which answers what is still queued
and releases the index. uvicorn then re-raises the signal it caught; the handlers installed here
absorb it, so a graceful stop exits 0 instead of dying of the signal.
"""
from __future__ import annotations

import signal

from .app import create_app
from .service import SearchService, ServeSettings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Load the index and its encoder, then serve until a stop signal (blocks)."""
    import uvicorn

    service = SearchService(settings)  # the model loads before the port opens: connecting means ready
    try:
        app = create_app(service, close_service_on_shutdown=True)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=settings.shutdown_timeout)
        previous = {sig: signal.signal(sig, _absorb) for sig in STOP_SIGNALS}
        try:
            uvicorn.Server(config).run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        service.close()  # no-op after the lifespan closed it; releases the index if uvicorn failed to start


def _absorb(signum, frame) -> None:
    """Replaces the default action (death by signal) once uvicorn has shut down gracefully."""
