"""``python -m service``: serve the app on NORMGATE_HOST:NORMGATE_PORT with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.config import Settings, get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("service.app:create_app", factory=True, **uvicorn_options(settings))


def uvicorn_options(settings: Settings) -> dict:
    """uvicorn.run keywords for these settings (also used by the tests' server with fault injection).

    SIGTERM: uvicorn stops accepting at once, lets accepted requests finish for shutdown_grace_s, then runs
    the lifespan shutdown (queues closed and drained, workers joined).
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "proxy_headers": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        # C parser and libuv loop (pyproject): the event loop reads 15 MB DICOM bodies with less Python,
        # which is time the model thread does not wait for the GIL (docs/benchmarks.md).
        "http": "httptools",
        "loop": "uvloop",
    }


if __name__ == "__main__":
    main()
