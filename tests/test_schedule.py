"""training/schedule.py: the learning-rate factor of each schedule at known steps, and the plateau tracker."""

from __future__ import annotations

import math

import pytest

from vitkit.training.schedule import Plateau, lr_factor


def curve(schedule: str, total: int | None, warmup: int = 0, floor: float = 0.0, **kw) -> list[float]:
    return [lr_factor(s, total, warmup, schedule, floor, **kw) for s in range(total or 50)]


def test_warmup_rises_linearly_to_the_peak_on_its_last_step():
    for schedule in ("cosine", "linear", "constant"):
        rising = curve(schedule, 100, warmup=4, floor=0.1)[:5]
        assert rising == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]), schedule  # never zero, peak reached
    # the warmup runs while the length is still unknown (a time budget not yet fitted), then holds the peak
    assert curve("cosine", None, warmup=4)[:6] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_decays_from_the_peak_to_the_floor_after_the_warmup():
    floor = 0.1
    steps = curve("cosine", 110, warmup=10, floor=floor)
    # 100 decay steps after 10 of warmup: progress p = (step - 10) / 100
    for step, progress in ((10, 0.0), (35, 0.25), (60, 0.5), (85, 0.75)):
        assert steps[step] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert steps[60] == pytest.approx((1 + floor) / 2)  # half way: the midpoint between peak and floor
    assert lr_factor(110, 110, 10, "cosine", floor) == pytest.approx(floor)
    assert lr_factor(500, 110, 10, "cosine", floor) == pytest.approx(floor)  # past the end: held at the floor
    assert all(a >= b for a, b in zip(steps[10:], steps[11:]))


def test_linear_decays_straight_to_zero_whatever_the_floor():
    steps = curve("linear", 110, warmup=10, floor=0.3)
    assert [steps[s] for s in (10, 35, 60, 85)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert lr_factor(110, 110, 10, "linear", 0.3) == 0.0


def test_constant_and_plateau_hold_the_peak():
    assert set(curve("constant", 100)) == {1.0}
    assert set(curve("plateau", 100, floor=0.5)) == {1.0}  # Plateau scales it apart
    assert set(curve("cosine", None)) == {1.0}  # unknown length: hold the peak


def test_triangle_rises_from_its_start_to_the_peak_then_falls_to_the_floor():
    start, peak_at, floor = 0.2, 0.25, 0.05
    steps = curve("triangle", 200, floor=floor, start_ratio=start, peak_at=peak_at)  # peak at step 50
    assert steps[0] == pytest.approx(start)
    assert steps[25] == pytest.approx(start + (1 - start) / 2)
    assert steps[50] == pytest.approx(1.0) and max(steps) == steps[50]
    assert steps[125] == pytest.approx(1 + (floor - 1) / 2)  # half way down
    assert lr_factor(200, 200, 0, "triangle", floor, start, peak_at) == pytest.approx(floor)
    assert lr_factor(400, 200, 0, "triangle", floor, start, peak_at) == pytest.approx(floor)
    assert all(a < b for a, b in zip(steps[:50], steps[1:51])) and all(a > b for a, b in zip(steps[50:], steps[51:]))


def test_triangle_has_its_own_warmup_and_holds_its_start_while_the_length_is_unknown():
    # warmup_steps is not the triangle's: its rise is set by peak_at
    assert lr_factor(0, 200, 50, "triangle", 0.05, 0.2, 0.25) == pytest.approx(0.2)
    assert lr_factor(10, 200, 50, "triangle", 0.05, 0.2, 0.25) == pytest.approx(0.2 + 0.8 * 10 / 50)
    assert set(curve("triangle", None, start_ratio=0.3)) == {0.3}
    # the defaults are airbench's: from 0.2 up to the peak at 23% of the steps
    assert lr_factor(0, 100, 0, "triangle", 0.07) == pytest.approx(0.2)
    assert lr_factor(23, 100, 0, "triangle", 0.07) == pytest.approx(1.0)


def test_plateau_scales_compound_and_each_improvement_resets_the_wait():
    p = Plateau("max", factor=0.1, patience=1, min_delta=0.01)
    assert p.step(0.5)
    assert not p.step(0.505)  # within min_delta of the best: no improvement
    assert p.reduce_if_stalled() and p.scale == pytest.approx(0.1)
    assert not p.step(0.4) and p.reduce_if_stalled() and p.scale == pytest.approx(0.01)
    assert p.step(0.52) and p.wait == 0 and not p.reduce_if_stalled() and p.best == 0.52
