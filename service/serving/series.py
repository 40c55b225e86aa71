"""The decision about a cine or a series from the decisions about its frames (docs/api.md, "Multi-frame images
and series").

The model classifies every frame on its own (Ozer et al. 2023 classify each frame of the LVOT cines
independently); a series is re-planned when any of its frames shows the quality problem, because the
technologist re-acquires the series, not a frame:

* **reacquire** when at least one *assessable* frame (one answered reacquire or accept) reaches the threshold;
* **accept** when there are assessable frames and none reaches it;
* **unassessable** only when every frame is; its reason is the one most frames have (ties: the order in which
  the checks run, ``REASON_ORDER``).

``worst_frame`` names the frame the top-level fields (probability, point, heatmap, OOD score) come from: the
assessable frame with the highest probability (the first of equal ones), which is the frame that decided a
reacquire; when no frame is assessable, the highest-probability frame the model did score (out of
distribution), else none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from models.imaging.assessability import UnassessableReason
from service.schemas import Decision, FrameResult

__all__ = ["REASON_ORDER", "SeriesVerdict", "aggregate_frames"]

# The order the unassessable checks run in (service/serving/assessment.py): ties between reasons go to the first.
REASON_ORDER: tuple[UnassessableReason, ...] = (
    "no_frames",
    "unsupported_modality",
    "too_small",
    "blank",
    "low_dynamic_range",
    "out_of_distribution",
)
if set(REASON_ORDER) != set(get_args(UnassessableReason)):  # a new reason needs its place in the order
    raise RuntimeError("REASON_ORDER must list every UnassessableReason")


@dataclass(frozen=True)
class SeriesVerdict:
    decision: Decision
    reason: UnassessableReason | None
    worst_frame: int | None  # position in the frames given (not their ``index`` field)


def aggregate_frames(frames: Sequence[FrameResult]) -> SeriesVerdict:
    """The series' decision, reason and deciding frame from its frames' results (module docstring)."""
    if not frames:
        return SeriesVerdict("unassessable", "no_frames", None)
    assessable = [i for i, frame in enumerate(frames) if frame.decision != "unassessable"]
    if assessable:
        worst = _highest(frames, assessable)
        assert worst is not None  # assessable frames always have a probability
        decision: Decision = "reacquire" if any(frames[i].decision == "reacquire" for i in assessable) else "accept"
        return SeriesVerdict(decision, None, worst)
    counts: Counter[UnassessableReason] = Counter(frame.reason for frame in frames if frame.reason is not None)
    reason: UnassessableReason | None = None
    for candidate in REASON_ORDER:  # the most frequent; of equally frequent ones the first in check order
        if counts[candidate] and (reason is None or counts[candidate] > counts[reason]):
            reason = candidate
    scored = [i for i, frame in enumerate(frames) if frame.probability is not None]
    return SeriesVerdict("unassessable", reason, _highest(frames, scored))


def _highest(frames: Sequence[FrameResult], positions: Sequence[int]) -> int | None:
    """The position with the highest probability, the first of equal ones; None when there is none."""
    best: int | None = None
    for position in positions:
        probability = frames[position].probability
        if probability is None:
            continue
        best_probability = frames[best].probability if best is not None else None
        if best_probability is None or probability > best_probability:
            best = position
    return best
