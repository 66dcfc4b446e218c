"""training/budget.py: the --time-budget arithmetic with made-up timings on a fake clock (no training):
what is reserved for the end of the run, how many steps fit, when training stops and whether another
epoch starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch.nn as nn

from vitkit.eval.ood import MAX_BANK
from vitkit.training.budget import (
    BANK_BUDGET_SHARE,
    EXIT_MARGIN_S,
    LAST_EPOCH_MIN_STEPS,
    SAVE_BYTES_PER_S,
    TimeBudget,
    feature_bank_images,
    reserve_for_finish,
)
from vitkit.viz.report import REPORT_FIGURES


class Clock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget_at(minutes: float = 10.0) -> tuple[TimeBudget, Clock]:
    clock = Clock()
    return TimeBudget(minutes, clock=clock), clock


# ----------------------------------------------------------------------------- the reserve


# the calibration's passes in fake_trainer: validation, the reported (test) split, the feature bank's images
CALIBRATION = 0.002 * (300 + 500 + MAX_BANK)


def fake_trainer(budget: TimeBudget, **overrides) -> SimpleNamespace:
    """What reserve_for_finish reads of a trainer: its measured costs, the split sizes, the model's size."""
    values = dict(
        budget=budget,
        model=nn.Linear(99, 10),  # 1,000 parameters: 4,000 bytes a copy
        setup=SimpleNamespace(
            val_loader=SimpleNamespace(split=range(300)),
            eval_loader=SimpleNamespace(split=range(500)),
            eval_split="test",
        ),
        data=SimpleNamespace(train=range(8_000)),
        save_s={"best": 0.25, "last": 0.75},
        inference_s_per_image=0.002,
        measures_bf16=False,
        multi_label=False,
        bf16_pass_share=0.5,
        cfg=SimpleNamespace(plots=True, hflip=False),
        state=SimpleNamespace(figure_s=0.5),
    )
    return SimpleNamespace(**{**values, **overrides})


def test_the_reserve_adds_the_passes_figures_saves_and_exit_at_the_measured_costs():
    budget, _ = budget_at()
    reserve_for_finish(fake_trainer(budget))
    validation, report = 0.002 * 300, 0.002 * 500  # one pass each
    assert budget.reserve == pytest.approx(
        validation + report + CALIBRATION + REPORT_FIGURES * 0.5 + 0.25 + 0.75 + EXIT_MARGIN_S
    )
    assert budget.training_seconds == pytest.approx(600 - budget.reserve)


def test_the_bf16_agreement_adds_its_passes_over_the_reported_split():
    single, _ = budget_at()
    reserve_for_finish(fake_trainer(single, measures_bf16=True, cfg=SimpleNamespace(plots=False, hflip=False)))
    # single-label: the final evaluation doubles as the agreement's fp32 pass; the bf16 pass takes half its time
    assert single.reserve == pytest.approx(0.002 * 300 + 1.5 * 0.002 * 500 + CALIBRATION + 1.0 + EXIT_MARGIN_S)
    multi, _ = budget_at()
    no_plots = SimpleNamespace(plots=False, hflip=False)
    reserve_for_finish(fake_trainer(multi, measures_bf16=True, multi_label=True, cfg=no_plots))
    assert multi.reserve == pytest.approx(0.002 * 300 + 2.5 * 0.002 * 500 + 1.0 + EXIT_MARGIN_S)


def test_checkpoints_not_yet_timed_are_estimated_from_the_model_size():
    budget, _ = budget_at()
    no_plots = SimpleNamespace(plots=False, hflip=False)
    reserve_for_finish(fake_trainer(budget, save_s={"best": None, "last": None}, cfg=no_plots))
    # best/ holds the weights; last/ the weights and the optimizer's two moments
    saves = (4_000 + 3 * 4_000) / SAVE_BYTES_PER_S
    assert budget.reserve == pytest.approx(0.002 * 800 + CALIBRATION + saves + EXIT_MARGIN_S)


def test_calibration_counts_validation_the_reported_split_and_the_feature_bank():
    budget, _ = budget_at()
    big = SimpleNamespace(train=range(MAX_BANK * 3))
    reserve_for_finish(fake_trainer(budget, data=big, cfg=SimpleNamespace(plots=False, hflip=False)))
    assert budget.reserve == pytest.approx(0.002 * (300 + 500 + 300 + 500 + MAX_BANK) + 1.0 + EXIT_MARGIN_S)
    on_val, _ = budget_at()
    val = SimpleNamespace(split=range(300))
    setup = SimpleNamespace(val_loader=val, eval_loader=val, eval_split="val")
    reserve_for_finish(fake_trainer(on_val, setup=setup, cfg=SimpleNamespace(plots=False, hflip=False)))
    # reported on validation: no pass of its own for the calibration
    assert on_val.reserve == pytest.approx(0.002 * (300 + 300 + 300 + MAX_BANK) + 1.0 + EXIT_MARGIN_S)
    mirrored, _ = budget_at()
    reserve_for_finish(fake_trainer(mirrored, data=big, cfg=SimpleNamespace(plots=False, hflip=True)))
    # trained with flips: the rejection scores each validation and bank image with its mirror too
    assert mirrored.reserve == pytest.approx(0.002 * (300 + 500 + 2 * 300 + 500 + 2 * MAX_BANK) + 1.0 + EXIT_MARGIN_S)


# ----------------------------------------------------------------------------- steps that fit


def test_setup_spends_the_budget_but_the_pace_is_measured_from_the_start_of_training():
    budget, clock = budget_at(10.0)  # 600 s
    budget.reserve = 60.0  # training must end at 540 s
    clock.now += 90.0  # data preparation and the size probe
    budget.start_training(steps_done=0)
    assert budget.plan(0) is None  # nothing timed yet
    clock.now += 45.0  # 100 steps in 45 s: 0.45 s a step; 540 - 135 = 405 s left -> 900 more steps
    assert budget.plan(100) == 1000


def test_a_resumed_budget_counts_the_earlier_time_and_measures_its_own_pace():
    first, clock = budget_at(10.0)
    clock.now += 200.0
    resumed = TimeBudget(10.0, clock=clock)
    resumed.load_state_dict(first.state_dict())  # 200 s spent before the resume
    clock.now += 20.0  # loading the checkpoint
    resumed.start_training(steps_done=400)
    assert resumed.plan(400) is None  # no step of this process timed yet
    clock.now += 30.0  # 60 steps in 30 s: 0.5 s a step; 600 - 250 = 350 s left -> 700 more
    assert resumed.elapsed() == pytest.approx(250.0) and resumed.plan(460) == 1160
    # a step's time is this process's steps over its training time: 0.5 s; 349 s on, two steps still fit
    assert resumed.another_epoch_fits(460)
    clock.now += 349.0
    assert resumed.another_epoch_fits(460 + 698)
    clock.now += 0.2
    assert not resumed.another_epoch_fits(460 + 698)


def test_past_the_budget_the_plan_ends_at_the_steps_already_done():
    budget, clock = budget_at(1.0)
    budget.start_training(0)
    clock.now += 90.0
    assert budget.plan(50) == 50 and budget.exhausted()


# ----------------------------------------------------------------------------- stopping rules


def test_training_stops_at_whichever_side_of_the_deadline_is_nearer():
    budget, clock = budget_at(1.0)  # 60 s, no reserve
    clock.now += 59.0  # 1 s left
    assert not budget.exhausted(step_s=1.9)  # the step ends 0.9 s past: nearer than stopping 1 s early
    assert not budget.cut_short
    assert budget.exhausted(step_s=2.1)  # 1.1 s past: stopping now is nearer
    assert budget.cut_short


def test_another_epoch_starts_while_a_few_steps_fit():
    """Not starting an epoch ends the run early by the time left and by the validation pass the reserve
    keeps for it: another starts while LAST_EPOCH_MIN_STEPS steps fit, however small a share of an epoch."""
    budget, clock = budget_at(1.0)  # 60 s
    budget.start_training(0)
    assert LAST_EPOCH_MIN_STEPS == 2
    # 100 steps in 55 s (0.55 s a step, validation included): 5 s left, a sliver of an epoch, still fits
    clock.now = budget.t0 + 55.0
    assert budget.another_epoch_fits(100)
    clock.now = budget.t0 + 58.8  # 1.2 s left: two steps of 0.588 s fit
    assert budget.another_epoch_fits(100)
    clock.now = budget.t0 + 59.0  # 1.0 s left: two steps of 0.59 s do not
    assert not budget.another_epoch_fits(100)
    assert budget.another_epoch_fits(1000)  # ten times faster steps: twenty of them fit
    # once the time-out has cut an epoch short, that epoch is the last
    clock.now = budget.t0 + 30.0
    assert budget.exhausted(step_s=100.0) and not budget.another_epoch_fits(1)


def test_without_a_budget_nothing_stops_and_nothing_is_planned():
    budget, clock = budget_at(0.0)
    budget.start_training(0)
    clock.now += 1e6
    assert not budget.enabled and budget.plan(10_000) is None
    assert not budget.exhausted(step_s=1e6) and budget.another_epoch_fits(1)


def test_a_budget_caps_the_feature_bank_at_its_share_of_the_time():
    budget, _ = budget_at()  # 600 s
    slow = fake_trainer(budget, inference_s_per_image=0.02)
    assert feature_bank_images(slow) == int(BANK_BUDGET_SHARE * 600 / 0.02)  # 1,500 of the 8,000 training images
    unbounded = fake_trainer(TimeBudget(0), inference_s_per_image=0.02)
    assert feature_bank_images(unbounded) == MAX_BANK
