"""``python -m service``: serve the app on NORMGATE_HOST:NORMGATE_PORT (uvicorn, ``service.api.server``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from service.api.server import serve
from service.config import get_settings
from service.db.engine import StoreConfigError, make_engine
from service.serving.registry import ConfigurationError, discover_checkpoints


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Checked before uvicorn starts, so a bad checkpoint is one line on stderr, not a lifespan traceback.
        discover_checkpoints(Path(settings.models_dir), settings.default_model)
        make_engine(settings.store_url).dispose()  # a malformed or unsupported NORMGATE_DATABASE_URL
    except (ConfigurationError, StoreConfigError) as exc:
        print(f"normgate: error: {exc}", file=sys.stderr)
        return 2
    serve("service.app:create_app", settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
