"""The pure metrics on hand-made maps, boxes and shapes (expected values worked out by hand or by sklearn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.pointing_game import (
    FrocPrediction,
    PointingGameResult,
    argmax_point,
    distance_to_box,
    energy_pointing_game,
    froc,
    froc_from_counts,
    pointing_game_hit,
)

BOX = (10.0, 20.0, 30.0, 40.0)  # x1, y1, x2, y2


def test_point_inside_box_is_a_hit_at_distance_zero():
    assert distance_to_box((15, 25), BOX) == 0.0
    assert distance_to_box((10, 40), BOX) == 0.0  # corner counts as inside
    assert pointing_game_hit((15, 25), [BOX], tau=0) is True


def test_exactly_on_the_tau_border_is_a_hit_and_just_outside_a_miss():
    # Straight right of the box: distance is x - x2.
    assert pointing_game_hit((45, 30), [BOX], tau=15) is True
    assert pointing_game_hit((45.001, 30), [BOX], tau=15) is False
    # Diagonal from the corner (30, 40): a 9-12-15 triangle is exactly 15 away.
    assert distance_to_box((39, 52), BOX) == pytest.approx(15.0)
    assert pointing_game_hit((39, 52), [BOX], tau=15) is True
    assert pointing_game_hit((40, 52), [BOX], tau=15) is False  # sqrt(10² + 12²) ≈ 15.62


def test_nearest_of_several_boxes_counts():
    far = (200.0, 200.0, 210.0, 210.0)
    near = (60.0, 0.0, 70.0, 5.0)
    point = (50, 2)  # 10 px left of `near`, far from the others
    assert pointing_game_hit(point, [far, BOX], tau=15) is False
    assert pointing_game_hit(point, [far, BOX, near], tau=15) is True
    assert pointing_game_hit(point, [far, near, BOX], tau=9.99) is False


def test_image_without_boxes_is_excluded():
    assert pointing_game_hit((5, 5), [], tau=15) is None
    result = PointingGameResult.from_outcomes([True, None, False, True, None])
    assert (result.hits, result.n, result.misses) == (2, 3, 1)
    assert result.accuracy == pytest.approx(2 / 3)
    assert PointingGameResult.from_outcomes([None]).accuracy is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="tau"):
        pointing_game_hit((0, 0), [BOX], tau=-1)
    with pytest.raises(ValueError, match="out of order"):
        distance_to_box((0, 0), (5, 5, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        argmax_point(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        argmax_point(np.zeros(4))
    with pytest.raises(ValueError):
        PointingGameResult(hits=3, n=2)


def test_argmax_point_is_column_row_and_ties_go_to_first_in_row_major_order():
    m = np.zeros((6, 8))
    m[4, 2] = 1.0
    assert argmax_point(m) == (2, 4)
    m[1, 7] = 1.0  # earlier row wins the tie
    m[4, 1] = 1.0
    assert argmax_point(m) == (7, 1)
    assert argmax_point(torch.zeros(3, 3)) == (0, 0)  # constant map: first pixel


def test_energy_pointing_game_on_a_hand_map():
    m = np.zeros((10, 10))
    m[2, 3] = 3.0  # inside box (x 2..4, y 1..2)
    m[1, 4] = 1.0  # inside, on the box edge
    m[8, 8] = 4.0  # outside
    m[0, 0] = -5.0  # negative: no mass
    assert energy_pointing_game(m, [(2, 1, 4, 2)]) == pytest.approx(4.0 / 8.0)
    # Overlapping boxes count each pixel once (union).
    assert energy_pointing_game(m, [(2, 1, 4, 2), (3, 2, 3, 2)]) == pytest.approx(0.5)
    # Fractional box corners: pixel indices 3..4 × 2..2 only.
    assert energy_pointing_game(m, [(2.5, 1.5, 4.2, 2.9)]) == pytest.approx(3.0 / 8.0)
    assert energy_pointing_game(np.zeros((4, 4)), [(0, 0, 1, 1)]) == 0.0
    assert energy_pointing_game(m, []) is None


class _Rect:
    def __init__(self, x1, y1, x2, y2):
        self.box = (x1, y1, x2, y2)

    def contains(self, x, y):
        x1, y1, x2, y2 = self.box
        return x1 <= x <= x2 and y1 <= y <= y2


def test_froc_on_a_hand_made_case():
    # 4 images, 3 objects (image a: 2, image b: 1), c and d negative. One point per image.
    objects = {"a": [_Rect(0, 0, 10, 10), _Rect(50, 50, 60, 60)], "b": [_Rect(0, 0, 5, 5)]}
    preds = [
        FrocPrediction("a", 0.9, 5, 5),  # detects a/0
        FrocPrediction("c", 0.8, 1, 1),  # FP #1 → FP/image 0.25 (crosses 0.125 and 0.25)
        FrocPrediction("b", 0.7, 2, 2),  # detects b/0
        FrocPrediction("d", 0.6, 9, 9),  # FP #2 → 0.5
    ]
    result = froc(preds, objects, n_images=4)
    # Sensitivity when FP/image first reaches 0.125 and 0.25: 1/3; at 0.5: 2/3; never reaches 1..8: final 2/3.
    expected = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    assert list(result.sensitivities) == pytest.approx(expected)
    assert result.froc == pytest.approx(sum(expected) / 7)


def test_froc_point_in_two_objects_detects_both_and_perfect_points_score_one():
    objects = {"a": [_Rect(0, 0, 10, 10), _Rect(5, 5, 20, 20)]}
    result = froc([FrocPrediction("a", 0.5, 7, 7)], objects, n_images=1)
    assert result.froc == 1.0  # no false positive ever: the final sensitivity everywhere
    assert froc_from_counts([(0.9, 0), (0.1, 1)], n_images=1, n_objects=1).sensitivities[0] == 0.0
    assert math.isclose(froc_from_counts([], n_images=2, n_objects=3).froc, 0.0)
