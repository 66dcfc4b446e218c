"""The end of a run, after its last epoch: the best checkpoint evaluated on the reported split (test, else
validation), bf16's agreement with fp32 recorded in best/, the report's figures, results.json, the run
folder marked complete, and the final log lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from ..eval.agreement import MIN_AGREEMENT, bf16_agreement, describe, record_agreement, record_bf16_agreement
from ..eval.calibration import describe_calibration
from ..eval.metrics import MetricAccumulator
from ..eval.multilabel import evaluate_multilabel
from ..models import count_parameters
from ..models.io import load_model
from ..runfiles import BEST, PER_LABEL, RELIABILITY_FIGURE
from .budget import feature_bank_images
from .distributed import shard_gatherer

if TYPE_CHECKING:
    from .engine import Trainer


def split_title(split: str, selected_checkpoint: bool) -> str:
    """How figures and messages name the split the final metrics are from."""
    name = {"val": "validation", "test": "test", "train": "training"}[split]
    return f"{name} split" + (" (it also chose the best epoch)" if selected_checkpoint else "")


def finish(trainer: Trainer) -> dict[str, Any]:
    """Evaluate the best checkpoint on the reported split, write results.json and the plots, mark the run
    folder complete; returns the results with the run folder."""
    setup, budget, run = trainer.setup, trainer.budget, trainer.run
    trainer.checkpoints.wait()  # the last last/ is written before the run is marked complete
    t_finish, training_s = budget.clock(), budget.training_time()
    final = final_multilabel if trainer.multi_label else final_single
    metrics, draw, summary, agreement, best = final(trainer)
    calibration = fit_scores(trainer, best) if trainer.ctx.is_main and not trainer.multi_label else None
    if trainer.ctx.is_main and trainer.cfg.plots:
        draw()  # before results.json, whose wall time includes the figures
    split = setup.eval_split
    results = {
        "split": split,
        # the validation split also picked best/ (and early stopping): its numbers are optimistic
        "split_selected_checkpoint": setup.split_selected_checkpoint,
        "metrics": metrics,
        **({"calibration": calibration} if calibration else {}),
        **({"bf16_agreement": agreement} if agreement else {}),
        **run_summary(trainer, training_s),
    }
    run.write_results(results)
    trainer.callbacks.call("on_train_end", {**results, "run_dir": str(run.path)})
    end_run(trainer)
    chose = "; it also chose the best epoch, so it is optimistic" if setup.split_selected_checkpoint else ""
    images = len(setup.eval_loader.split)
    trainer.log(
        f"{split_title(split, False)} ({images} images, epoch {trainer.state.best_epoch}'s weights{chose}): "
        f"{summary}  ->  {run.path}"
    )
    if calibration:
        trainer.log(describe_calibration(calibration))
    if agreement:
        below = f"stays in fp32 (below {MIN_AGREEMENT:.1%})"
        verdict = "runs bf16" if record_agreement(agreement) >= MIN_AGREEMENT else below
        trainer.log(f"{describe(agreement)}: --precision auto {verdict}")
    if budget.enabled:
        trainer.log(
            f"time: {budget.elapsed():.0f} s of the {budget.seconds:.0f} s budget (start-up "
            f"{budget.elapsed() - training_s - (budget.clock() - t_finish):.0f} s, training "
            f"{training_s:.0f} s, final evaluation and figures {budget.clock() - t_finish:.0f} s)"
            + (
                f"; {budget.clock() - budget.stopped_at:.0f} s after the last training step, "
                f"{budget.reserve:.0f} s kept for it"
                if budget.stopped_at is not None
                else ""
            )
        )
    return {**results, "run_dir": str(run.path)}


def final_single(trainer: Trainer):
    """(metrics, figure drawing, summary line, bf16 agreement, the model) of the best checkpoint; every rank
    evaluates its shard."""
    from ..viz.report import write_report

    ctx, setup, data = trainer.ctx, trainer.setup, trainer.data
    best = load_model(trainer.run.checkpoint(BEST))[0] if ctx.is_main else trainer.eval_model()
    best = best.to(trainer.device)
    if ctx.enabled:  # every rank evaluates its shard with rank 0's best weights
        state = {k: v.cpu() for k, v in best.state_dict().items()} if ctx.is_main else None
        best.load_state_dict(ctx.broadcast_object(state))
    if trainer.measures_bf16:  # the final evaluation's fp32 pass is also the agreement's reference
        accumulator = MetricAccumulator(data.num_classes, device=trainer.device)
        agreement = measure_bf16(trainer, best, None, accumulator)
        m = accumulator.compute(data.class_names)
    else:
        m, agreement = trainer.evaluate(best, setup.eval_loader, data.class_names), None
    names, history, path, augment = data.class_names, trainer.state.history, trainer.run.path, trainer.augment
    title = split_title(setup.eval_split, setup.split_selected_checkpoint)
    top5 = f"  top-5 {m['top5']:.4f}" if data.num_classes > 5 else ""  # 1 by definition up to 5 classes
    return (
        m,
        lambda: write_report(path, best, setup.eval_loader.split, augment, names, history, m, title),
        f"top-1 {m['top1']:.4f}{top5}  f1-macro {m['f1_macro']:.4f}",
        agreement,
        best,
    )


def fit_scores(trainer: Trainer, best: nn.Module) -> dict:
    """Calibrate the best checkpoint (`best`, its model as the final evaluation loaded it) and set its
    unknown-input thresholds on the validation split, kept in best/ (`eval.trust`); the calibration report
    (temperature, ECE/NLL/Brier before and after on the reported split) for results.json, and
    reliability.png when the run draws figures."""
    from ..eval.trust import fit_trust, mirrors_for_scores, record_trust

    setup, folder = trainer.setup, trainer.run.checkpoint(BEST)
    fitted = fit_trust(best, trainer.data, setup.eval_split, trainer.augment.for_inference, trainer.device,
                       trainer.cfg.eval_batch_size, bank_images=feature_bank_images(trainer),
                       mirror=mirrors_for_scores(trainer.cfg.hflip))
    record_trust(folder, fitted)
    report = fitted["calibration"]
    if trainer.cfg.plots:
        from ..viz.calibration import plot_reliability

        title = split_title(setup.eval_split, setup.split_selected_checkpoint)
        plot_reliability(fitted["logits"], fitted["labels"], report["temperature"], title,
                         trainer.run.path / RELIABILITY_FIGURE)
    return {**report, "ood": {k: fitted["ood"][k] for k in ("method", "thresholds", "keep", "fitted_on")}}


def final_multilabel(trainer: Trainer):
    """`final_single` for multi-label data: the best checkpoint at its own thresholds (tuned on the
    validation split when it was saved): mAP, F1 and the per-label table (per_label.csv), and the figures."""
    from ..eval.multilabel import write_label_table
    from ..viz.report import write_multilabel_report

    setup, path, ctx = trainer.setup, trainer.run.path, trainer.ctx
    split = setup.eval_loader
    best, meta = load_model(trainer.run.checkpoint(BEST)) if ctx.is_main else (trainer.eval_model(), None)
    best = best.to(trainer.device)
    if ctx.enabled:  # every rank evaluates its shard with rank 0's best weights and thresholds
        weights = {k: v.cpu() for k, v in best.state_dict().items()} if ctx.is_main else None
        weights, meta = ctx.broadcast_object((weights, meta))
        best.load_state_dict(weights)
    gather = shard_gatherer(ctx, split)
    names = trainer.data.class_names
    m, scores, targets = evaluate_multilabel(best, split, trainer.augment, names, meta["thresholds"], gather=gather)
    if ctx.is_main:
        write_label_table(path / PER_LABEL, m)
    title = split_title(setup.eval_split, setup.split_selected_checkpoint)
    return (
        {**m, "thresholds_from": "val"},
        lambda: write_multilabel_report(
            path, best, split.split, trainer.augment, trainer.state.history, m, scores, targets, title,
            trainer.cfg.multilabel_loss,
        ),
        f"mAP macro {m['map_macro']:.4f}  micro {m['map_micro']:.4f}  f1-macro {m['f1_macro']:.4f}  "
        f"f1-micro {m['f1_micro']:.4f}",
        measure_bf16(trainer, best, meta["thresholds"]) if trainer.measures_bf16 else None,
        best,
    )


def measure_bf16(trainer: Trainer, best: nn.Module, thresholds: list[float] | None, fp32_metrics=None) -> dict:
    """bf16's agreement with fp32 (top-1, or label sets) on the reported split, recorded in best/ so
    that '--precision auto' is guarded from the first prediction; `fp32_metrics` as in bf16_agreement."""
    setup, ctx = trainer.setup, trainer.ctx
    reduce = ctx.all_reduce_sum if ctx.enabled else None
    report = bf16_agreement(
        best, setup.eval_loader, trainer.augment.for_inference, setup.eval_split, thresholds, reduce, fp32_metrics
    )
    if ctx.is_main:
        record = {**report, "data": trainer.cfg.data}
        record_bf16_agreement(trainer.run.checkpoint(BEST), record, notice=lambda line: trainer.log(line))
    return report


def run_summary(trainer: Trainer, training_s: float) -> dict[str, Any]:
    """results.json beside the metrics: how the run went and what it was."""
    setup, cfg, state, budget = trainer.setup, trainer.cfg, trainer.state, trainer.budget
    return {
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped_by": trainer.stopped_by,
        "monitor": trainer.monitor,
        "train_time_s": round(training_s, 1),
        "wall_time_s": round(budget.elapsed(), 1),
        **({"time_budget_s": budget.seconds} if budget.enabled else {}),
        "parameters": count_parameters(trainer.model),
        "model": setup.model_name,
        "architecture": trainer.model.architecture,
        "preset": cfg.preset,
        "data": cfg.data,
        "skipped_images": len(setup.bad_images),
        "world_size": trainer.ctx.world_size,
        "images_trained": state.images_trained,
        **({"images_planned": planned_images(trainer)} if not budget.enabled else {}),
        "global_batch_size": setup.global_batch,
        "per_device_batch_size": setup.local_batch,
        "lr": cfg.lr,
    }


def planned_images(trainer: Trainer) -> int:
    """The training images --epochs asks for, over all ranks: what images_trained reaches unless the run
    stopped early, whatever processes it lost or gained on the way."""
    loader = trainer.train_loader
    return trainer.cfg.epochs * min(len(loader.split), len(loader) * loader.global_batch)


def end_run(trainer: Trainer) -> None:
    """args.yaml with what the run did, and run.json marked complete."""
    epochs_run = len(trainer.state.history)
    trainer.run.write_config(trainer.cfg, ran=(epochs_run, trainer.stopped_by))
    trainer.run.write_status(
        "complete", {**trainer.run_info(), "epochs_run": epochs_run, "stopped_by": trainer.stopped_by}
    )
