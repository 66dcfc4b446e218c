"""Optimisers with the usual weight-decay exclusions and per-group learning-rate scales."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import VitkitError
from ..options import name_list


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 0.0,
    head_scale: float = 1.0,
    freeze_backbone: bool = False,
    norm_scale: float = 1.0,
    norm_bias_decay: bool = False,
) -> list[dict]:
    """No weight decay for what the model names in `no_weight_decay()` (position embeddings, class
    tokens), nor, unless `norm_bias_decay`, for norms and biases (all 1-D tensors); with it the
    normalisation layers' decay is divided by `norm_scale`, so that each step decays them as much as the
    weights (the optimizers decay by lr x decay). Each group carries `lr_scale`: layer-wise decay
    (layer_decay ** distance from the top, by the model's `layer_id`), the classifier's own scale and
    the normalisation layers' (`norm_scale`); a frozen backbone leaves only the classifier trainable."""
    skip_decay = model.no_weight_decay()
    norms = model.norm_parameters() if norm_scale != 1 else set()
    top = model.num_layers + 1
    groups: dict[tuple[bool, float, float], list] = {}
    for name, p in model.named_parameters():
        is_head = model.is_classifier(name)
        if freeze_backbone and not is_head:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        scale = head_scale if is_head else 1.0
        if layer_decay and not is_head:
            scale *= layer_decay ** (top - model.layer_id(name))
        decay = weight_decay
        if name in norms:
            scale *= norm_scale
            decay /= norm_scale
        no_decay = (p.ndim <= 1 and not norm_bias_decay) or name in skip_decay
        groups.setdefault((no_decay, scale, 0.0 if no_decay else decay), []).append(p)
    return [
        {"params": params, "weight_decay": decay, "lr_scale": scale}
        for (no_decay, scale, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    groups: list[dict],
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    device = next(model.parameters()).device.type
    # One fused kernel per step where torch has one (CUDA, CPU): fewer passes over the weights than the
    # multi-tensor path, which a small model's CPU step feels.
    fast = {"fused": True} if device in ("cuda", "cpu") else {"foreach": True}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fast)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **fast)


def training_optimizer(model: nn.Module, cfg, steps_per_epoch: int):
    """(optimizer, Lookahead or None, LookaheadEMA or None) of a run's configuration (a TrainConfig)."""
    head_scale = cfg.head_lr / cfg.lr if cfg.head_lr else 1.0
    groups = param_groups(
        model, cfg.weight_decay, cfg.layer_decay, head_scale, cfg.freeze_backbone, cfg.norm_lr_scale,
        cfg.norm_bias_decay,
    )
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, groups, cfg.nesterov)
    trained = [p for group in groups for p in group["params"]]
    lookahead = Lookahead(trained, cfg.lookahead) if cfg.lookahead else None
    lookahead_ema = None
    if cfg.lookahead_ema:
        start = round(cfg.lookahead_ema_start * -(-steps_per_epoch // cfg.accum_steps))
        lookahead_ema = LookaheadEMA(model, cfg.lookahead_ema, cfg.lookahead_ema_every, start, cfg.lookahead_ema_ramp)
    return optimizer, lookahead, lookahead_ema


class Lookahead:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back"): a slow copy of
    the trained weights; every `every` steps it moves `alpha` of the way to the fast (optimizer's) weights
    and the fast weights restart from it. It damps the noise of a high learning rate."""

    def __init__(self, params: list[torch.Tensor], every: int, alpha: float = 0.5):
        self.params, self.every, self.alpha = params, every, alpha
        self.slow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after optimizer step number `step` (counted from 1)."""
        if step % self.every:
            return
        torch._foreach_lerp_(self.slow, [p.detach() for p in self.params], self.alpha)
        torch._foreach_copy_([p.detach() for p in self.params], self.slow)

    def state_dict(self) -> dict:
        return {"slow": [t.cpu() for t in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        for slow, saved in zip(self.slow, state["slow"]):
            slow.copy_(saved)


class LookaheadEMA:
    """airbench94's Lookahead (Jordan, 2024): a moving average of the model's whole state, weights and
    BatchNorm statistics alike. After optimizer step `start_step` it starts as a copy of the model; from
    then on every `every` steps it moves toward the model with decay `decay ** every` scaled by the share
    of training done to the power `ramp` (following the model early, holding it late), and the model
    continues from the average, as it also does at each epoch's end."""

    def __init__(self, model: nn.Module, decay: float, every: int, start_step: int, ramp: float):
        self.model, self.decay, self.every, self.start_step, self.ramp = model, decay, every, start_step, ramp
        self.average: list[torch.Tensor] | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The model's floating-point state (a BatchNorm's count of batches is an integer: not averaged)."""
        return [t for t in self.model.state_dict().values() if t.is_floating_point()]

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int | None) -> None:
        """Called after optimizer step number `step` (counted from 1) of `total_steps` (None: not yet known,
        as under a time budget before its first fit: the average then follows the model)."""
        if step <= self.start_step or step % self.every:
            return
        state = self.tensors()
        if self.average is None:
            self.average = [t.clone() for t in state]
            return
        done = min(1.0, step / total_steps) if total_steps else 0.0
        decay = self.decay**self.every * done**self.ramp
        torch._foreach_lerp_(self.average, state, 1 - decay)
        torch._foreach_copy_(state, self.average)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """The model continues from the average (the steps since its last update are dropped)."""
        if self.average is not None:
            torch._foreach_copy_(self.tensors(), self.average)

    def state_dict(self) -> dict:
        return {"average": None if self.average is None else [t.cpu() for t in self.average]}

    def load_state_dict(self, state: dict) -> None:
        saved = state["average"]
        self.average = None if saved is None else [t.to(s.device) for t, s in zip(saved, self.tensors())]


def frozen_parameters(model: nn.Module, freeze_after: dict[str, int], epoch: int) -> list[nn.Parameter]:
    """The parameters that --freeze-after stops training in `epoch` (counted from 0): each NAME is a
    parameter or a module holding parameters; a name the model does not have is an error."""
    named = dict(model.named_parameters())
    frozen = []
    for name, epochs in freeze_after.items():
        matches = [p for n, p in named.items() if n == name or n.startswith(name + ".")]
        if not matches:
            raise VitkitError(
                f"--freeze-after {name}={epochs}: the model has no parameter or module of that name; its "
                f"parameters: {name_list(list(named))}"
            )
        if epoch >= epochs:
            frozen += matches
    return frozen
