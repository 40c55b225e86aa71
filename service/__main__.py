"""``python -m service``: serve the app on NORMGATE_HOST:NORMGATE_PORT with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.config import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                log_level="info", proxy_headers=False)


if __name__ == "__main__":
    main()
