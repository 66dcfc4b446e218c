"""What a run prints: before its first epoch what it is about to do (the data found, the model, where and
in which precision it runs, and the plan: schedule, time budget, a resumed run's re-planned schedule),
then a line per epoch."""

from __future__ import annotations

import torch

from ..models import count_parameters


def _names(names: list[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def data_lines(trainer) -> list[str]:
    setup, data = trainer.setup, trainer.data
    splits = [("train", data.train), ("val", data.val), ("test", data.test)]
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits if split is not None)
    total = sum(len(split) for _, split in splits if split is not None)
    lines = [f"data     {trainer.cfg.data}: {total} images, {data.num_classes} classes ({_names(data.class_names)})"]
    held_out = f" (val held out: {trainer.cfg.val_split:.0%} of train)" if data.val_held_out else ""
    lines.append(f"         splits: {sizes}{held_out}")
    if data.test is None:
        lines.append("         no test split: the final metrics are on val, which also chooses the best epoch")
    train = data.train
    if train.in_memory:
        mib = sum(s.images.numel() for _, s in splits if s is not None and s.in_memory) / 2**20
        where = f"decoded in memory at {train.stored_size} px ({mib:.{0 if mib >= 10 else 1}f} MiB)"
    else:
        where = f"streamed from disk, decoded at {train.stored_size} px by {setup.train_loader.workers} worker(s)"
    lines.append(f"         {where}; the model sees {setup.image_size} px")
    if setup.bad_images:
        lines.append(f"         {len(setup.bad_images)} unreadable image(s) skipped (skipped_images.txt)")
    paths = {name: split.paths for name, split in splits if split is not None and getattr(split, "paths", None)}
    if paths:
        from ..check import train_check

        lines += train_check(trainer.cfg.data, paths, trainer.cfg.data_dir)
    return lines


def model_lines(trainer) -> list[str]:
    setup, model = trainer.setup, trainer.model
    lines = [
        f"model    {setup.model_name}: {model.architecture}",
        f"         {count_parameters(model) / 1e6:.2f}M parameters, {setup.image_size} px input",
    ]
    if setup.size_note:
        lines.append(f"         {setup.size_note}")
    record = trainer.cfg.budget_size
    if record:
        estimates = "; ".join(
            f"{_args(c.model_args)}: ~{c.affordable_epochs:g} epochs (needs {c.min_epochs:g})"
            for c in record.candidates
        )
        lines.append(f"         size chosen by --time-budget: {_args(record.model_args)} (measured here: {estimates})")
    return lines


def _args(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) if changes else "the preset's own size"


def run_lines(trainer, start_epoch: int) -> list[str]:
    cfg, setup = trainer.cfg, trainer.setup
    device = trainer.device
    count = torch.get_num_threads()
    threads = f", {count} thread{'s' if count > 1 else ''}" if device.type == "cpu" else ""
    precision = "bf16 autocast" if trainer.bf16 else "fp32"
    processes = f", {trainer.ctx.world_size} processes" if trainer.ctx.world_size > 1 else ""
    lines = [f"device   {device}{threads}{processes}, {precision}"]
    schedule = cfg.schedule + (f" to {cfg.lr * cfg.min_lr_ratio:.1e}" if cfg.schedule == "cosine" else "")
    warmup = f", warmup {cfg.warmup_epochs:g} epoch(s)" if cfg.warmup_epochs else ""
    lines.append(
        f"plan     batch {setup.global_batch} ({trainer.steps_per_epoch} steps an epoch), {cfg.optimizer} lr "
        f"{cfg.lr:g}, {schedule}{warmup}"
    )
    budget = trainer.budget
    if budget.enabled:
        lines.append(
            f"budget   {_minutes(budget.seconds)} for the whole command, {budget.elapsed():.0f} s of it spent on "
            "start-up (data, model); training takes what is left less the time kept for the final evaluation "
            "and figures, and the schedule is fitted to it"
        )
    else:
        lines.append(f"length   {cfg.epochs} epochs")
        if cfg.warmup_epochs >= cfg.epochs and cfg.schedule in ("cosine", "linear"):
            lines.append(
                f"         warning: the warmup ({cfg.warmup_epochs:g} epochs) lasts the whole run, so the rate never "
                "reaches its peak or decays: lower --warmup-epochs or raise --epochs"
            )
    if cfg.resume:
        lines.append(f"resume   from epoch {start_epoch} of {cfg.epochs if not budget.enabled else 'the budget'}")
        if trainer.state.replanned_from is not None and trainer.state.planned_steps:
            lines.append(
                f"         the schedule was {trainer.state.replanned_from} steps long and is re-planned over "
                f"{cfg.epochs} epochs ({trainer.state.planned_steps} steps): lr {trainer.scheduled_lr():.2e} now, "
                f"decaying to {cfg.lr * cfg.min_lr_ratio if cfg.schedule == 'cosine' else 0:.2e}"
            )
    return lines


def startup_summary(trainer, start_epoch: int) -> str:
    """The lines printed (stderr) before the first epoch."""
    head = f"vitkit train -> {trainer.run.path}"
    return "\n".join([head, *data_lines(trainer), *model_lines(trainer), *run_lines(trainer, start_epoch)])


def epoch_line(row: dict, multi_label: bool, num_classes: int) -> str:
    """An epoch's log line (top-5 only when there are more than 5 classes: else it is 1 by definition)."""
    if multi_label:
        return (
            f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_mAP {row['val_map']:.4f}  val_mAP_micro {row['val_map_micro']:.4f}  lr {row['lr']:.2e}  "
            f"{row['images_per_s']:.0f} img/s"
        )
    return (
        f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
        f"val_top1 {row['val_top1']:.4f}  "
        + (f"val_top5 {row['val_top5']:.4f}  " if num_classes > 5 else "")
        + f"lr {row['lr']:.2e}  "
        f"{row['images_per_s']:.0f} img/s"
    )


def result_summary(result: dict) -> dict:
    """What `vitkit train` prints when a run ends: the run folder and the headline metrics of the split it
    reported on."""
    metrics, split = result["metrics"], result["split"]
    if "map_macro" in metrics:
        keys = ["map_macro", "map_micro", "f1_macro", "f1_micro", "f1_micro@0.5"]
        keys += ["mean_predicted_labels", "mean_true_labels"]
    else:  # top-5 of 5 classes or fewer is 1 by definition
        keys = ["top1", "top5"] if len(metrics["class_names"]) > 5 else ["top1"]
    summary = {"run_dir": result["run_dir"], "split": split, **{f"{split}_{key}": metrics[key] for key in keys}}
    return {**summary, "split_selected_checkpoint": result["split_selected_checkpoint"]}
