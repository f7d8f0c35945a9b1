"""Average, BWT and forgetting on hand-made accuracy matrices."""

from __future__ import annotations

import pytest

from worker.continual.metrics import average, average_se, bwt, forgetting


def test_average_and_bwt_of_a_hand_made_matrix() -> None:
    r = [[0.90, None, None],
         [0.80, 0.70, None],
         [0.60, 0.75, 0.50]]
    assert average(r) == pytest.approx((0.60 + 0.75 + 0.50) / 3)
    # (0.60 − 0.90 + 0.75 − 0.70) / 2
    assert bwt(r) == pytest.approx(-0.125)
    assert forgetting(r) == pytest.approx([0.30, 0.0, 0.0])


def test_positive_backward_transfer() -> None:
    r = [[0.5, None], [0.7, 0.9]]
    assert bwt(r) == pytest.approx(0.2)
    assert average(r) == pytest.approx(0.8)


def test_single_task_has_no_bwt() -> None:
    assert bwt([[0.4]]) is None
    assert average([[0.4]]) == pytest.approx(0.4)


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [[0.1, None], [None, 0.3]]])
def test_malformed_matrices_are_rejected(bad: list) -> None:
    with pytest.raises(ValueError):
        average(bad)


def test_average_standard_error() -> None:
    r = [[0.5, None], [0.5, 0.9]]
    # sqrt(0.25/100 + 0.09/100) / 2
    assert average_se(r, [100, 100]) == pytest.approx((0.0025 + 0.0009) ** 0.5 / 2)
    with pytest.raises(ValueError):
        average_se(r, [100])
