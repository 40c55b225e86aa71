"""The morning burst: ``ModalityUser`` traffic shaped like the 8 o'clock rush (a ``LoadTestShape``).

A quiet start (``base`` rooms), every room at once for the middle of the run (``peak`` rooms, arriving within
seconds of each other), then back to quiet, then stop. The whole timeline is scaled to
``NORMGATE_BURST_SECONDS`` (default 120) so the same shape fits a 1-minute smoke run or a 10-minute soak:

    share of run   0–20 %   20–25 %        25–70 %   70–100 %
    rooms          base     ramp to peak   peak      base

    .venv/bin/locust -f load_tests/burst.py --headless --host http://127.0.0.1:8000
    NORMGATE_BURST_PEAK=16 NORMGATE_BURST_SECONDS=300 .venv/bin/locust -f load_tests/burst.py --headless ...
"""

from __future__ import annotations

import os

from locust import LoadTestShape
from locustfile import ModalityUser  # noqa: F401  (Locust finds the user class in this module)


def burst_stages(total_s: float, base: int, peak: int) -> list[tuple[float, int, float]]:
    """(ends at second, users, spawn rate per second) for each stage."""
    return [
        (0.20 * total_s, base, float(base)),
        (0.25 * total_s, peak, max(1.0, (peak - base) / max(1.0, 0.05 * total_s))),
        (0.70 * total_s, peak, float(peak)),
        (1.00 * total_s, base, float(peak)),
    ]


class MorningBurst(LoadTestShape):
    total_s = float(os.environ.get("NORMGATE_BURST_SECONDS", "120"))
    base = int(os.environ.get("NORMGATE_BURST_BASE", "2"))
    peak = int(os.environ.get("NORMGATE_BURST_PEAK", "12"))

    def tick(self):
        elapsed = self.get_run_time()
        for ends_at, users, rate in burst_stages(self.total_s, self.base, self.peak):
            if elapsed < ends_at:
                return users, rate
        return None  # the run stops by itself
