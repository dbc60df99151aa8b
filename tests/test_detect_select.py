"""select_regions: the paper's conf >= 0.4, degenerate-box removal, NMS across expressions, cap, normalising."""
from __future__ import annotations

import pytest

from stages.detect import select_regions

EXPRS = [{"short_expr": "a red dog", "long_expr": "a red dog lying on the sofa"},
         {"short_expr": "a brown puppy", "long_expr": "a small brown puppy next to the cushion"}]


def test_confidence_threshold_is_inclusive_at_0_4() -> None:
    dets = [((0, 0, 10, 10), 0.39, 0), ((20, 20, 30, 30), 0.40, 0), ((40, 40, 50, 50), 0.41, 1)]
    regions = select_regions(dets, EXPRS, 100, 100)
    assert [r["bbox"][4] for r in regions] == [0.41, 0.4]
    assert [r["short_expr"] for r in regions] == ["a brown puppy", "a red dog"]


def test_the_threshold_is_a_parameter() -> None:
    dets = [((0, 0, 10, 10), 0.39, 0), ((20, 20, 30, 30), 0.40, 0), ((40, 40, 50, 50), 0.41, 1)]
    assert len(select_regions(dets, EXPRS, 100, 100, conf=0.405)) == 1
    assert len(select_regions(dets, EXPRS, 100, 100, conf=0.3)) == 3


def test_overlapping_boxes_of_two_expressions_keep_only_the_higher_score() -> None:
    dets = [((10, 10, 60, 60), 0.7, 0), ((12, 12, 62, 62), 0.9, 1), ((70, 70, 90, 90), 0.5, 0)]
    regions = select_regions(dets, EXPRS, 100, 100, iou=0.5)
    assert [(r["short_expr"], r["bbox"][4]) for r in regions] == [("a brown puppy", 0.9), ("a red dog", 0.5)]
    assert regions[0]["long_expr"] == "a small brown puppy next to the cushion"
    # With a looser IoU threshold both overlapping boxes survive.
    assert len(select_regions(dets, EXPRS, 100, 100, iou=0.95)) == 3


def test_degenerate_boxes_are_dropped_and_partial_ones_clipped() -> None:
    dets = [((50, 10, 20, 40), 0.9, 0),      # x1 > x2
            ((30, 30, 30, 60), 0.9, 0),      # zero width
            ((150, 150, 190, 190), 0.9, 1),  # wholly outside a 100x100 image
            ((-20, 80, 40, 130), 0.8, 1)]    # partly outside: clipped to the image
    regions = select_regions(dets, EXPRS, 100, 100)
    assert len(regions) == 1
    assert regions[0]["bbox"] == [0.0, 0.8, 0.4, 1.0, 0.8]


def test_boxes_are_normalised_xyxy_with_score_and_tied_to_their_expression() -> None:
    regions = select_regions([((64, 24, 192, 96), 0.87654, 1)], EXPRS, 256, 128)
    assert regions == [{"bbox": [0.25, 0.1875, 0.75, 0.75, 0.8765], "short_expr": "a brown puppy",
                        "long_expr": "a small brown puppy next to the cushion", "flag_short_neg": 0,
                        "short_expr_negs": {}}]


def test_at_most_max_regions_highest_scores_first_and_unknown_expression_index_ignored() -> None:
    dets = [((i * 10, 0, i * 10 + 8, 8), 0.5 + i / 100, i % 2) for i in range(8)] + [((0, 50, 9, 59), 0.99, 5)]
    regions = select_regions(dets, EXPRS, 100, 100, max_regions=3)
    assert [r["bbox"][4] for r in regions] == pytest.approx([0.57, 0.56, 0.55])


def test_result_does_not_depend_on_detection_order() -> None:
    dets = [((10, 10, 60, 60), 0.8, 0), ((12, 12, 62, 62), 0.8, 1), ((70, 70, 90, 90), 0.6, 1)]
    assert select_regions(dets, EXPRS, 100, 100) == select_regions(dets[::-1], EXPRS, 100, 100)
