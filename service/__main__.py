"""``python -m service``: serve the app on NORMGATE_HOST:NORMGATE_PORT with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.config import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM: uvicorn stops accepting at once, lets accepted requests finish for shutdown_grace_s, then runs
    # the lifespan shutdown (queues closed and drained, workers joined). limit_concurrency answers 503 to
    # connections beyond max_connections before any of them holds memory.
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                log_level="info", proxy_headers=False, limit_concurrency=settings.max_connections or None,
                timeout_graceful_shutdown=settings.shutdown_grace_s)


if __name__ == "__main__":
    main()
