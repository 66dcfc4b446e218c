"""Optimisers with the usual weight-decay exclusions and per-group learning-rate scales."""

from __future__ import annotations

import torch
import torch.nn as nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 0.0,
    head_scale: float = 1.0,
    freeze_backbone: bool = False,
    norm_scale: float = 1.0,
) -> list[dict]:
    """No weight decay for norms, biases (all 1-D tensors) and what the model names in
    `no_weight_decay()` (position embeddings, class tokens). Each group carries `lr_scale`: layer-wise
    decay (layer_decay ** distance from the top, by the model's `layer_id`), the classifier's own
    scale and the normalisation layers' (`norm_scale`); a frozen backbone leaves only the classifier
    trainable."""
    skip_decay = model.no_weight_decay()
    norms = model.norm_parameters() if norm_scale != 1 else set()
    top = model.num_layers + 1
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        is_head = model.is_classifier(name)
        if freeze_backbone and not is_head:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        scale = head_scale if is_head else 1.0
        if layer_decay and not is_head:
            scale *= layer_decay ** (top - model.layer_id(name))
        if name in norms:
            scale *= norm_scale
        no_decay = p.ndim <= 1 or name in skip_decay
        groups.setdefault((no_decay, scale), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        for (no_decay, scale), params in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
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
    # multi-tensor path, which a small model's CPU step feels (benchmarks/throughput.py measures it).
    fast = {"fused": True} if device in ("cuda", "cpu") else {"foreach": True}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fast)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **fast)


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
