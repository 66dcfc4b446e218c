"""The pure pieces of the training core: schedules, the time budget, the best-so-far tracker,
parameter groups for every family, the configuration (flags, help, YAML files, resume rules) and
run folders written by earlier vitkit versions."""

import dataclasses
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import MODEL_FAMILIES, new_trainer, run_vitkit

import vitkit
from vitkit.data.prepare import DATASET_DEFAULTS, DataOptions
from vitkit.errors import VitkitError
from vitkit.models import count_parameters, create_model, get_preset
from vitkit.models.io import load_model
from vitkit.models.presets import Preset
from vitkit.training import TrainConfig, resume_config
from vitkit.training.budget import EXIT_MARGIN_S, FIRST_PLAN_STEPS, TimeBudget
from vitkit.training.config import GROUPS, LR_FIND_OPTIONS, RESUMABLE
from vitkit.training.optim import param_groups
from vitkit.training.resolve import make_config, size_pending, with_budget_size
from vitkit.training.rundir import RunDir
from vitkit.training.schedule import Plateau, lr_factor
from vitkit.training.sizing import BudgetSize

OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0.1"  # written by vitkit before the engine redesign


# ----------------------------------------------------------------------------- schedules


def test_lr_schedule_shapes():
    cosine = [lr_factor(s, 100, 10, "cosine", 0.01) for s in range(100)]
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
    assert cosine[10] == pytest.approx(1.0) and cosine[55] == pytest.approx(0.505)  # half way: the midpoint
    assert lr_factor(100, 100, 10, "cosine", 0.01) == pytest.approx(0.01)  # ends at the floor
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    linear = [lr_factor(s, 100, 0, "linear", 0.01) for s in (0, 25, 50, 100)]
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.0])  # straight to zero, floor ignored
    assert {lr_factor(s, 100, 0, "constant", 0.01) for s in range(100)} == {1.0}
    assert {lr_factor(s, 100, 0, "plateau", 0.01) for s in range(100)} == {1.0}  # scaled apart by Plateau
    assert lr_factor(5000, None, 0, "cosine", 0.01) == 1.0  # unknown length: hold the peak


def test_plateau_reduces_after_patience_and_tracks_the_best():
    p = Plateau("min", factor=0.5, patience=2)
    assert p.step(1.0) and p.best == 1.0
    assert not p.step(1.0) and not p.reduce_if_stalled()  # one stalled epoch: within patience
    assert not p.step(0.99995)  # below min_delta: not an improvement
    assert p.reduce_if_stalled() and p.scale == 0.5 and p.wait == 0
    assert p.step(0.5) and p.best == 0.5
    restored = Plateau("min", factor=0.5, patience=2)
    restored.load_state_dict(p.state_dict())
    assert (restored.best, restored.wait, restored.scale) == (0.5, 0, 0.5)
    top = Plateau("max", patience=3)
    assert [top.step(v) for v in (0.1, 0.3, 0.2, 0.3, 0.31)] == [True, True, False, False, True]
    assert top.best == 0.31


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_budget_plans_from_the_measured_pace():
    clock = FakeClock()
    budget = TimeBudget(1.0, clock=clock)  # 60 s
    assert budget.plan(0) is None  # nothing timed yet: hold the peak
    clock.now += 6.0  # 20 steps in 6 s: 0.3 s a step, 54 s left -> 180 more steps
    assert budget.plan(20) == 200
    assert budget.another_epoch_fits(20)  # 0.3 s a step, 54 s left
    clock.now += 50.0  # 56 s used, 200 steps: the 4 s left still get a (cut) epoch
    assert budget.another_epoch_fits(200)
    clock.now += 3.5  # 59.5 s used: the 0.5 s left is less than two 0.3 s steps
    assert not budget.another_epoch_fits(200) and not budget.exhausted()
    clock.now += 1.5
    assert budget.exhausted() and budget.plan(200) == 200
    resumed = TimeBudget(1.0, clock=clock)
    resumed.load_state_dict(budget.state_dict())
    clock.now += 1.0
    assert resumed.elapsed() == pytest.approx(62.0)  # time before the resume counts
    assert TimeBudget(0.0, clock=clock).plan(20) is None and not TimeBudget(0.0).exhausted()


def test_time_budget_keeps_every_pass_after_training_and_stops_at_the_nearest_step():
    clock = FakeClock()
    budget = TimeBudget(1.0, clock=clock)  # 60 s
    # 0.01 s an image: the last epoch's validation (100 images) and 3 passes over a 200-image test split
    # (final evaluation, then fp32 and bf16 for the agreement), 4 figures of 0.5 s, 2 s of checkpoints
    budget.keep_for_finish(0.01, val_images=100, report_images=200, report_passes=3, figures_s=2.0, save_s=2.0)
    assert budget.reserve == pytest.approx(1.0 + 6.0 + 2.0 + 2.0 + EXIT_MARGIN_S)
    clock.now = budget.t0 + budget.training_seconds - 1.5
    assert not budget.exhausted(step_s=2.0)  # a 2 s step ends 0.5 s past: closer than stopping 1.5 s early
    clock.now = budget.t0 + budget.training_seconds - 0.5
    assert budget.exhausted(step_s=2.0) and not budget.exhausted(step_s=0.5)
    # an epoch the budget cut short is the last, even where the time left would seem to allow one more:
    # another epoch would train at least one step past the budget, then validate again
    fresh = TimeBudget(1.0, clock=clock)
    clock.now = fresh.t0 + 10.0  # an epoch of 10 s, 50 s left
    assert fresh.another_epoch_fits(1)
    assert fresh.exhausted(step_s=200.0) and not fresh.another_epoch_fits(1)


def test_the_size_probe_times_a_whole_training_step_and_the_loading():
    from vitkit.training.sizing import loading_seconds, training_rate

    torch.manual_seed(0)
    model = create_model("vit_micro_patch4_32", num_classes=3, image_size=8, depth=1, embed_dim=16, num_heads=1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.randint(3, (8,))
    augmented = []

    def augment(x):
        augmented.append(x)
        return x.float() / 255

    args = (model, optimizer, images, labels, augment, torch.device("cpu"), False, False)
    rate = training_rate(*args, loading_s=0.0)
    assert len(augmented) == 7  # 2 untimed and 5 timed steps, each augmenting the batch
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the optimizer stepped
    slow = training_rate(*args, loading_s=1.0)  # a second to load each batch bounds the rate at 8 images/s
    assert slow < 8 < rate

    def batches():
        for _ in range(10):
            time.sleep(0.02)
            yield images, labels

    assert loading_seconds(batches()) == pytest.approx(0.02, abs=0.015)


def budget_run(tmp_path, warmup_epochs: float):
    """A 0.12-minute --time-budget run on a clock that advances 0.1 s per optimizer step whatever the
    machine's speed (72 steps, 11 an epoch); returns the trainer, (step, lr) of every step, the result
    and the run folder."""
    cfg = make_config(
        time_budget=0.12,
        lr=2e-3,
        warmup_epochs=warmup_epochs,
        min_lr_ratio=0.01,
        train_limit=400,
        out=str(tmp_path / "run"),
        progress=False,
        batch_size=32,
    )
    trainer = None
    trainer = new_trainer(cfg, TimeBudget(cfg.time_budget, clock=lambda: trainer.state.step * 0.1 if trainer else 0.0))
    seen_lrs = []
    step = trainer.set_lr

    def recording_set_lr():
        seen_lrs.append((trainer.state.step, step()))
        return seen_lrs[-1][1]

    trainer.set_lr = recording_set_lr
    run = RunDir.claim(cfg.out, tmp_path / "unused", resume=False)
    result = trainer.fit(run)
    run.release()
    return trainer, seen_lrs, result, run


@pytest.mark.slow
def test_time_budget_run_fits_the_schedule_to_the_clock(tmp_path):
    """It ends at the budget, holds the peak lr until the first plan (after the first epoch or
    FIRST_PLAN_STEPS steps), then decays to the floor by the end."""
    lr = 2e-3
    trainer, seen_lrs, result, run = budget_run(tmp_path, warmup_epochs=0)
    cfg = trainer.cfg
    assert 72 - trainer.steps_per_epoch <= trainer.state.step <= 72 + trainer.steps_per_epoch
    assert all(
        value == pytest.approx(lr) for s, value in seen_lrs if s < min(FIRST_PLAN_STEPS, trainer.steps_per_epoch)
    )
    assert seen_lrs[-1][1] < 0.1 * lr
    assert result["epochs_run"] == len(trainer.state.history) >= 3
    # the budget, not --epochs, ended the run, and the run folder says so beside the request
    assert result["stopped_by"] == "time_budget" and result["epochs_run"] != cfg.epochs
    status = json.loads((run.path / "run.json").read_text())
    assert status["epochs_run"] == result["epochs_run"] and status["stopped_by"] == "time_budget"
    args = (run.path / "args.yaml").read_text()
    assert args.startswith(
        f"# As requested. The run trained {result['epochs_run']} epoch(s), stopped by the --time-budget"
    )
    assert yaml.safe_load(args)["epochs"] == cfg.epochs
    lrs = [row["lr"] for row in trainer.state.history]
    assert lrs[0] > 0.8 * lr and all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.slow
def test_time_budget_caps_warmup_at_a_tenth_of_the_schedule(tmp_path):
    """--warmup-epochs 5 would be 55 of the 72 steps the budget holds: once the schedule is fitted,
    warmup ends at FIRST_PLAN_STEPS (a tenth of 72 is less) and the peak is reached there."""
    trainer, seen_lrs, _, _ = budget_run(tmp_path, warmup_epochs=5)
    lrs = dict(seen_lrs)
    assert trainer.warmup_steps == 55  # the request, kept for the records
    assert lrs[10] == pytest.approx(2e-3 * 11 / 55)  # ramping towards 55 before the plan exists
    assert lrs[FIRST_PLAN_STEPS] == pytest.approx(2e-3, rel=1e-3)  # the peak once capped
    assert lrs[40] < lrs[FIRST_PLAN_STEPS] and max(lrs.values()) == pytest.approx(2e-3, rel=1e-3)
    # on a longer schedule the tenth decides: 100 of 1,000 planned steps, neither the floor nor the request
    trainer.warmup_steps, trainer.state.planned_steps, trainer.state.step = 500, 1000, 49
    assert trainer.scheduled_lr() == pytest.approx(2e-3 * 50 / 100, rel=1e-3)


def test_a_budget_size_sits_between_the_preset_and_the_users_arguments():
    """The resolved configuration holds the preset's model and arguments; with a budget, the candidate
    sizes the budget chooses among leave out what the user's --model-arg fixes."""
    preset = get_preset("cifar-hybrid")
    plain = make_config(preset="cifar-hybrid")
    assert (plain.model, plain.model_args, plain.budget_size) == (preset.model, preset.model_args, None)
    budget = make_config(preset="cifar-hybrid", time_budget=3)
    assert [c.model_args for c in budget.budget_size.candidates] == [c for _, c in preset.budget_sizes]
    assert size_pending(budget)
    chosen = with_budget_size(budget, BudgetSize(model_args={"embed_dim": 256, "depth": 6}, candidates=[]))
    assert chosen.model_args == {**preset.model_args, "embed_dim": 256, "depth": 6} and not size_pending(chosen)
    mine = make_config(preset="cifar-hybrid", time_budget=3, model_args={"embed_dim": 96})
    assert all("embed_dim" not in c.model_args for c in mine.budget_size.candidates)  # --model-arg wins
    assert mine.model_args["embed_dim"] == 96
    # the resolved configuration is plain: read back from its own values it is the same, no size pending
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(chosen.to_dict())))
    assert again.model_args == {k: list(v) if isinstance(v, tuple) else v for k, v in chosen.model_args.items()}
    assert again.budget_size == chosen.budget_size and not size_pending(again)


def test_precedence_defaults_dataset_preset_yaml_flags(tmp_path):
    """One order: declared default < dataset default < preset < YAML file < flags."""
    declared = TrainConfig.__dataclass_fields__
    assert make_config(data="mnist").weight_decay == declared["weight_decay"].default  # nothing above it
    assert make_config(data="mnist").epochs == DATASET_DEFAULTS["mnist"]["epochs"] != declared["epochs"].default
    recipe = get_preset("cifar-resnet")
    assert "epochs" in recipe.train and recipe.train["epochs"] != DATASET_DEFAULTS["cifar10"]["epochs"]
    assert make_config(preset="cifar-resnet", data="cifar10").epochs == recipe.train["epochs"]  # preset > dataset
    # what the dataset suggests and the preset does not name takes the declared default under a preset
    assert "hflip" not in get_preset("d2l-vit-fashion-mnist").train and DATASET_DEFAULTS["fashion-mnist"]["hflip"]
    assert make_config(preset="d2l-vit-fashion-mnist").hflip is False
    config = tmp_path / "options.yaml"
    config.write_text("epochs: 7\nlr: 0.004\n")
    from_yaml = make_config(config, preset="cifar-resnet", data="cifar10")
    assert (from_yaml.epochs, from_yaml.lr) == (7, 0.004)  # YAML > preset
    flagged = make_config(config, preset="cifar-resnet", data="cifar10", lr=0.003)
    assert (flagged.epochs, flagged.lr) == (7, 0.003)  # flags > YAML


def test_native_size_presets_follow_the_precedence(tmp_path):
    """A native-size preset leaves a built-in dataset's own size and crop padding to the dataset layer,
    which the YAML file and the flags still override; on a folder the preset's size stands."""
    gmlp = get_preset("cifar-gmlp")
    assert gmlp.native_size and gmlp.train["image_size"] == 32
    native = make_config(preset="cifar-gmlp", data="fashion-mnist")
    assert (native.image_size, native.crop_padding) == (28, 2)
    config = tmp_path / "options.yaml"
    config.write_text("image_size: 24\n")
    assert make_config(config, preset="cifar-gmlp", data="fashion-mnist").image_size == 24
    assert make_config(config, preset="cifar-gmlp", data="fashion-mnist", image_size=20).image_size == 20
    assert make_config(preset="cifar-resnet", data="fashion-mnist").image_size == 28
    assert not get_preset("folder-cct").native_size
    assert make_config(preset="folder-cct", data="fashion-mnist").image_size == 64


def test_resume_rules_lr_find_flags_and_data_options_come_from_the_declarations():
    fields = dataclasses.fields(TrainConfig)
    assert set(RESUMABLE) == {f.name for f in fields if f.metadata["resumable"]}
    assert {"epochs", "time_budget", "threads", "memory_limit_gb"} <= set(RESUMABLE) and "lr" not in RESUMABLE
    assert set(LR_FIND_OPTIONS) == {f.name for f in fields if "lr-find" in f.metadata["commands"]}
    assert {"lr", "epochs", "out", "schedule"}.isdisjoint(LR_FIND_OPTIONS) and "batch_size" in LR_FIND_OPTIONS
    sweep_flags = run_vitkit("lr-find", "--help").stdout
    assert "--batch-size" in sweep_flags and "--epochs" not in sweep_flags and "--budget-size" not in sweep_flags
    assert "--budget-size" not in run_vitkit("train", "--help").stdout  # recorded by vitkit, no flag
    data_fields = {f.name for f in dataclasses.fields(DataOptions)}
    assert {"data", "val_split", "labels", "seed", "memory_limit_gb"} <= data_fields and "lr" not in data_fields
    assert data_fields <= {f.name for f in fields}  # the training configuration takes them whole
    # a declared bound is enforced without a line of its own in validate
    with pytest.raises(VitkitError, match=r"--ra-magnitude must be in \[0, 30\], got 31"):
        make_config(ra_magnitude=31)


@pytest.mark.slow
def test_time_budget_takes_the_largest_size_it_can_train_long_enough(tmp_path, monkeypatch):
    """The size is chosen by the training rate measured on this machine: the largest size whose
    budget affords its epochs; run.json records the estimates, and --resume rebuilds that size."""
    from vitkit.models import PRESETS
    from vitkit.training.build import Runtime, build

    # the larger size is several times the arithmetic, so timing noise on a busy machine cannot reverse them
    affordable, unreachable = dict(depth=2, embed_dim=48, num_heads=2), dict(depth=4, embed_dim=128, num_heads=2)
    preset = Preset(
        "sized",
        "vit_micro_patch4_32",
        "test",
        model_args=dict(depth=1, embed_dim=32, num_heads=2, image_size=8, patch_size=4),
        train=dict(data="digits", image_size=8, batch_size=64, crop_padding=0, warmup_epochs=0),
        budget_sizes=((1, affordable), (1e9, unreachable)),
    )
    monkeypatch.setitem(PRESETS, "sized", preset)
    out = tmp_path / "run"
    vitkit.train(preset="sized", time_budget=0.1, out=str(out), progress=False, threads=1)

    record = yaml.safe_load((out / "args.yaml").read_text())["budget_size"]  # in the configuration itself
    assert record["model_args"] == affordable == json.loads((out / "run.json").read_text())["budget_size"]["model_args"]
    first, second = record["candidates"]
    assert (first["min_epochs"], second["min_epochs"]) == (1, 1e9) and first["affordable_epochs"] >= 1
    # measured, not assumed: the larger model trains fewer images per second, so fewer epochs fit
    assert 0 < second["affordable_epochs"] < first["affordable_epochs"]
    saved = load_model(out / "best")[0]
    assert (len(saved.blocks), saved.config.embed_dim) == (2, 48)

    resumed = resume_config(out)
    assert count_parameters(build(resumed, Runtime.create(resumed))[1].model) == count_parameters(saved)
    extended = resume_config(out, epochs=50)  # trained longer by epochs: no budget now, the same size
    assert extended.time_budget == 0 and extended.epochs == 50
    assert count_parameters(build(extended, Runtime.create(extended))[1].model) == count_parameters(saved)
    # args.yaml of a version that recorded the choice in run.json only: the size comes from there
    args = yaml.safe_load((out / "args.yaml").read_text())
    args.update(model=None, model_args={}, budget_size=None)
    del args["budget_size"]
    (out / "args.yaml").write_text(yaml.safe_dump(args))
    old = resume_config(out)
    assert count_parameters(build(old, Runtime.create(old))[1].model) == count_parameters(saved)
    status = json.loads((out / "run.json").read_text())
    del status["budget_size"]
    (out / "run.json").write_text(json.dumps(status))
    with pytest.raises(VitkitError, match="does not record the model size"):
        resume_config(out)


def test_the_trainers_state_round_trips_through_state_dict(tmp_path):
    """state_dict / load_state_dict carry what a resume continues from: the optimizer, the schedule and
    best-so-far state, the history and the random generators; a second trainer then steps identically."""
    cfg = make_config(train_limit=200, batch_size=32, epochs=2, threads=1, progress=False, ema=0.9)
    first = new_trainer(cfg)
    images, labels = next(first.train_loader.batches(0))
    first.aug_gen.manual_seed(3)
    for _ in range(3):
        first.train_step(first.model, images, labels)
    first.state.history, first.state.best_epoch = [{"epoch": 1, "val_top1": 0.5}], 1
    first.state.plateau.step(0.5)
    first.state.stopper.step(0.5)
    state = first.state.state_dict()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = new_trainer(cfg)
    second.model.load_state_dict(saved)
    second.state.load_state_dict(torch.load(_round_trip(state, tmp_path), weights_only=True))
    assert (second.state.step, second.state.history, second.state.best_epoch) == (3, first.state.history, 1)
    assert second.state.plateau.state_dict() == first.state.plateau.state_dict()
    assert second.state.stopper.state_dict() == first.state.stopper.state_dict()
    assert second.state.planned_steps == first.state.planned_steps
    for a, b in zip(first.optimizer.state.values(), second.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a, b) for a, b in zip(first.ema.state_dict().values(), second.ema.state_dict().values()))
    shared = torch.get_rng_state()  # the global generator, which load_state_dict restored, serves both
    for trainer in (first, second):
        torch.set_rng_state(shared)
        trainer.train_step(trainer.model, images, labels)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    # saved by two processes, loaded by one: everything but the per-rank augmentation stream carries over,
    # and that one is drawn from the saved state, the same at every load
    two_ranks = {**state, "world_size": 2, "rank_rngs": state["rank_rngs"] * 2, "images_trained": 96}
    augmentation = []
    for _ in range(2):
        second.state.load_state_dict(two_ranks)
        augmentation.append(second.aug_gen.get_state())
    assert second.state.resumed_world_size == 2 and second.state.images_trained == 96 and second.state.step == 3
    assert torch.equal(*augmentation) and not torch.equal(augmentation[0], state["rank_rngs"][0]["aug_rng"])
    assert torch.equal(torch.get_rng_state(), state["rank_rngs"][0]["torch_rng"])


def _round_trip(state: dict, tmp_path: Path) -> Path:
    """`state` as trainer.pt stores it."""
    path = tmp_path / "trainer.pt"
    torch.save(state, path)
    return path


def test_drop_last_keeps_or_trains_the_last_short_batch():
    """--drop-last (the default) drops each epoch's last incomplete batch; --no-drop-last trains on it."""
    options = dict(train_limit=100, batch_size=32, threads=1, progress=False)  # 90 training images
    assert len(new_trainer(make_config(**options)).train_loader) == 2
    loader = new_trainer(make_config(**options, drop_last=False)).train_loader
    assert len(loader) == 3 and sum(len(labels) for _, labels in loader.batches(0)) == 90
    assert "--no-drop-last" in run_vitkit("train", "--help").stdout and "drop_last" not in RESUMABLE


# ----------------------------------------------------------------------------- model contract


@pytest.mark.parametrize("name", MODEL_FAMILIES)
def test_param_groups_and_layer_ids_for_every_family(name):
    model = create_model(name, num_classes=3)
    names = [n for n, _ in model.named_parameters()]
    ids = {n: model.layer_id(n) for n in names}
    top = model.num_layers + 1
    assert set(ids.values()) == set(range(top + 1)), "every layer from the stem (0) to the head must be used"
    assert all(ids[n] == top for n in names if model.is_classifier(n))
    stem = next(n for n in names if not model.is_classifier(n))  # the first parameter is the stem's
    assert ids[stem] == 0
    groups = param_groups(model, 0.05, layer_decay=0.5, head_scale=10.0)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["head.weight"])] == 10.0
    assert scale[id(params[stem])] == 0.5**top  # the stem decays most, ResNet included
    assert all(decay[id(p)] == 0.0 for n, p in params.items() if p.ndim <= 1 or n in model.no_weight_decay())
    assert any(decay[id(p)] == 0.05 for p in params.values())
    assert sum(len(g["params"]) for g in groups) == len(names)


@pytest.mark.parametrize("name", MODEL_FAMILIES)
def test_reset_classifier_keeps_the_backbone(name):
    model = create_model(name, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7) and model.config.num_classes == 7
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


def test_checkpoints_with_the_old_head_layout_load():
    """Before the head was named, it was an nn.Sequential: `head.1` or, with hidden layers,
    `head.1`, `head.4`, `head.7`. Such weights load into `pre_logits` / `head`."""
    model = create_model("keras-vit-cifar100", depth=1)
    new = model.state_dict()
    old = {}
    for k, v in new.items():
        if k.startswith("pre_logits."):
            old["head." + k[len("pre_logits.") :]] = v
        elif k.startswith("head."):
            old["head.7." + k[len("head.") :]] = v
        else:
            old[k] = v
    fresh = create_model("keras-vit-cifar100", depth=1)
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in new.items())


# ----------------------------------------------------------------------------- configuration


def test_every_train_flag_has_help_in_a_group():
    out = run_vitkit("train", "--help").stdout
    for title in GROUPS:
        assert f"\n{title}:\n" in out
    parser_lines = out.split("\ndata:\n", 1)[1]
    for field in TrainConfig.__dataclass_fields__.values():
        if "train" not in field.metadata["commands"]:  # recorded by vitkit, not a flag
            continue
        flag = "--" + ("model-arg" if field.name == "model_args" else field.name.replace("_", "-"))
        assert flag in parser_lines, flag
        assert field.metadata["help"], f"{field.name} has no help text"
    assert "(default: 0.001)" in out and "{cosine,linear,constant,plateau,triangle}" in out


@pytest.mark.slow
def test_yaml_config_file_with_flags_over_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"epochs": 1, "lr": 0.005, "batch-size": 32, "train_limit": 300}))
    out = tmp_path / "run"
    plain = ("--no-progress", "--no-plots", "--threads", "1")
    proc = run_vitkit("train", "--config", str(config), "--lr", "0.002", "--out", str(out), *plain)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "args.yaml").read_text())
    assert (saved["epochs"], saved["lr"], saved["batch_size"], saved["train_limit"]) == (1, 0.002, 32, 300)
    # a run's own args.yaml is a config file: the same run again, elsewhere
    again = run_vitkit("train", "--config", str(out / "args.yaml"), "--out", str(tmp_path / "again"), *plain)
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load((tmp_path / "again" / "args.yaml").read_text())["lr"] == 0.002
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    bad = run_vitkit("train", "--config", str(config), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown option(s) learning_rate" in bad.stderr and "Traceback" not in bad.stderr


def test_resume_refuses_changes_that_alter_the_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    with pytest.raises(ValueError, match="--lr cannot change when resuming"):
        resume_config(run, lr=0.5)
    assert resume_config(run, epochs=3, lr=resume_config(run).lr).epochs == 3  # same value: not a change


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(image_size=-8), "--image-size must be at least 1"),
        (dict(mixup=-1), "--mixup must not be negative"),
        (dict(warmup_epochs=-2), "--warmup-epochs must not be negative"),
        (dict(threads=-1), "--threads must not be negative"),
        (dict(data="cifar-10"), "Did you mean cifar10"),
        (dict(schedule="cosin"), "--schedule 'cosin': use one of cosine"),
        (dict(label_smoothing=1.0), "--label-smoothing must be in"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        make_config(**options)


@pytest.mark.slow
def test_a_second_run_cannot_take_a_claimed_folder(tmp_path):
    first = RunDir.claim(str(tmp_path / "run"), tmp_path, resume=False)
    with pytest.raises(ValueError, match="in use by another vitkit process"):
        RunDir.claim(str(tmp_path / "run"), tmp_path, resume=True)
    first.release()
    (tmp_path / "run" / "args.yaml").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run"):
        RunDir.claim(str(tmp_path / "run"), tmp_path, resume=False)


# ----------------------------------------------------------------------------- older run folders


@pytest.mark.slow
def test_a_run_folder_from_before_the_redesign_loads_resumes_and_exports(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    clf = vitkit.load(run, backend="torch")
    assert clf.model(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    before, _ = load_model(run / "last")
    result = vitkit.train(resume=str(run), epochs=3, progress=False, threads=1)
    assert result["epochs_run"] == 3
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1] == (OLD_RUN / "metrics.csv").read_text().splitlines()[1]
    after, _ = load_model(run / "last")
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    proc = run_vitkit("export", str(run), str(tmp_path / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.onnx").stat().st_size > 0 and "max_abs_logit_diff" in json.loads(proc.stdout)


def test_presets_listing_counts_parameters_without_building_weights():
    from vitkit.models import PRESETS, count_parameters

    out = run_vitkit("presets").stdout.splitlines()
    assert out[0].split()[:4] == ["name", "family", "params", "size"]
    rows = {line.split()[0]: line for line in out[1:] if not line.startswith(" ")}  # budget sizes are indented
    assert set(rows) == set(PRESETS)
    expected = count_parameters(create_model("keras-mixer-cifar100")) / 1e6
    assert f"{expected:.2f}M" in rows["keras-mixer-cifar100"] and "64px" in rows["keras-mixer-cifar100"]


@pytest.mark.slow
def test_logs_suit_files_epoch_lines_without_progress_frames(tmp_path):
    common = ("--epochs", "2", "--train-limit", "300", "--threads", "1", "--no-plots")
    logged = run_vitkit("train", "--out", str(tmp_path / "a"), *common)  # stderr is a pipe, not a terminal
    assert logged.returncode == 0, logged.stderr
    lines = logged.stderr.splitlines()
    assert sum(line.startswith("epoch ") and "val_top1" in line for line in lines) == 2
    assert "\r" not in logged.stderr and "it/s" not in logged.stderr
    quiet = run_vitkit("train", "--out", str(tmp_path / "b"), "--quiet", *common)
    assert quiet.returncode == 0 and "epoch" not in quiet.stderr


# ----------------------------------------------------------------------------- elastic runs


def test_mid_epoch_checkpoints_are_due_by_steps_or_minutes_and_written_from_a_copy(tmp_path, monkeypatch):
    from vitkit.training import checkpointing
    from vitkit.training.distributed import DistContext

    clock = [0.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])
    by_steps = checkpointing.Checkpoints(4, 0.0, DistContext())
    assert [s for s in range(1, 13) if by_steps.due(s, mid_epoch=True)] == [4, 8, 12]
    assert not by_steps.due(8, mid_epoch=False)  # the epoch's end writes its own
    by_minutes = checkpointing.Checkpoints(0, 2.0, DistContext())
    clock[0] = 119.0
    assert not any(by_minutes.due(s, True) for s in range(1, 30))
    clock[0] = 120.0  # checked every TIME_CHECK_STEPS steps, so that the ranks agree
    assert [s for s in range(1, 30) if by_minutes.due(s, True)] == [10, 20]

    cfg = make_config(train_limit=100, batch_size=32, epochs=1, threads=1, progress=False)
    trainer = new_trainer(cfg)
    trainer.run = RunDir(tmp_path)
    trainer.save_last(0, 2)
    live = next(iter(trainer.model.parameters()))
    before = live.detach().clone()
    with torch.no_grad():
        live.add_(1.0)  # the next step, while the copy is being written
    trainer.checkpoints.wait()
    saved = load_model(tmp_path / "last")[0]
    assert torch.equal(next(iter(saved.parameters())), before)
    state = torch.load(tmp_path / "last" / "trainer.pt", weights_only=True)
    assert (state["epoch"], state["next_batch"], state["images_trained"]) == (0, 2, 0)


def test_ctrl_c_while_waiting_for_last_leaves_the_writer_waited_for(tmp_path):
    """Ctrl-C lands while the epoch's end waits for a slow last/ write: the failure path must still wait for
    the write to end (the process once exited under a live writer and aborted)."""
    gate = threading.Event()

    class SlowDisk(RunDir):
        def save_checkpoint(self, *args, **kwargs):
            gate.wait()
            super().save_checkpoint(*args, **kwargs)

    trainer = new_trainer(make_config(train_limit=100, batch_size=32, epochs=1, threads=1, progress=False))
    trainer.run = SlowDisk(tmp_path)
    trainer.save_last(0, 2)
    main = threading.main_thread().ident
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            trainer.checkpoints.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    threading.Timer(0.3, gate.set).start()
    assert trainer.checkpoints.settle() is None
    assert trainer.run.find_last() is not None  # written before settle() returned


def test_restarts_need_a_fresh_rendezvous_store_for_each_start(monkeypatch):
    """torchrun's shared store keeps the failed start's addresses: refused in a line before any connection."""
    from vitkit.training.distributed import init_distributed

    for name, value in dict(WORLD_SIZE="2", RANK="0", TORCHELASTIC_USE_AGENT_STORE="True").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    with pytest.raises(VitkitError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        init_distributed("cpu")
