"""The series rule (service/serving/series.py): reacquire if any assessable frame reaches the threshold, the
worst frame the highest-probability assessable one, unassessable only when every frame is."""

from __future__ import annotations

from service.schemas import FrameResult
from service.serving.series import REASON_ORDER, aggregate_frames


def frame(index: int, probability: float | None, decision: str, reason: str | None = None) -> FrameResult:
    return FrameResult(index=index, probability=probability, decision=decision, reason=reason)


def test_one_frame_over_the_threshold_makes_the_series_reacquire():
    frames = [frame(0, 0.2, "accept"), frame(1, 0.7, "reacquire"), frame(2, 0.9, "reacquire"), frame(3, 0.1, "accept")]
    verdict = aggregate_frames(frames)
    assert (verdict.decision, verdict.reason, verdict.worst_frame) == ("reacquire", None, 2)


def test_no_frame_over_the_threshold_accepts_and_names_the_closest_frame():
    frames = [frame(0, 0.2, "accept"), frame(1, 0.45, "accept"), frame(2, 0.45, "accept")]
    assert aggregate_frames(frames) == aggregate_frames(frames)  # deterministic
    verdict = aggregate_frames(frames)
    assert (verdict.decision, verdict.worst_frame) == ("accept", 1)  # the first of equal probabilities


def test_unassessable_frames_do_not_decide_while_any_frame_is_assessable():
    # An out-of-distribution frame keeps its (high) probability but decides nothing.
    frames = [frame(0, None, "unassessable", "blank"), frame(1, 0.99, "unassessable", "out_of_distribution")]
    frames.append(frame(2, 0.3, "accept"))
    verdict = aggregate_frames(frames)
    assert (verdict.decision, verdict.reason, verdict.worst_frame) == ("accept", None, 2)


def test_all_frames_unassessable_gives_the_most_common_reason():
    frames = [
        frame(0, None, "unassessable", "blank"),
        frame(1, 0.8, "unassessable", "out_of_distribution"),
        frame(2, 0.6, "unassessable", "out_of_distribution"),
    ]
    verdict = aggregate_frames(frames)
    assert (verdict.decision, verdict.reason, verdict.worst_frame) == ("unassessable", "out_of_distribution", 1)
    # A tie goes to the check that runs first; no scored frame: no worst frame.
    tie = [frame(0, None, "unassessable", "low_dynamic_range"), frame(1, None, "unassessable", "blank")]
    verdict = aggregate_frames(tie)
    assert (verdict.reason, verdict.worst_frame) == ("blank", None)
    assert REASON_ORDER.index("blank") < REASON_ORDER.index("low_dynamic_range")
    assert aggregate_frames([]).reason == "no_frames"
