"""The service as ``python -m service`` runs it (same server, ``service.api.server.serve``), with a slow model for the overload and
shutdown tests: every batch of the default model takes NORMGATE_TEST_BATCH_SECONDS longer, so the capacity is
known and small whatever the machine. Run: ``python -m tests.service.fault_server`` with NORMGATE_* set.
"""

from __future__ import annotations

import logging
import os
import time

from service.api.server import serve
from service.app import create_app
from service.config import get_settings


def slow_batches(model_name, batch) -> None:
    if model_name == get_settings().default_model:
        time.sleep(float(os.environ.get("NORMGATE_TEST_BATCH_SECONDS", "0.2")))


def create():
    return create_app(get_settings(), batch_hook=slow_batches)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve("tests.service.fault_server:create", get_settings())
