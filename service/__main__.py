"""``python -m service``: serve the app on NORMGATE_HOST:NORMGATE_PORT with uvicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from service.config import Settings, get_settings
from service.serving.registry import ConfigurationError, discover_checkpoints


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Checked before uvicorn starts, so a bad checkpoint is one line on stderr, not a lifespan traceback.
        discover_checkpoints(Path(settings.models_dir), settings.default_model)
    except ConfigurationError as exc:
        print(f"normgate: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run("service.app:create_app", factory=True, **uvicorn_options(settings))
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
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
    sys.exit(main())
