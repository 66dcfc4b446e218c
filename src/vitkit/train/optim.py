"""Optimisers with the usual weight-decay exclusions, and the learning-rate schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay for norms, biases (all 1-D tensors) and position embeddings / class tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    groups: list[dict] | None = None) -> torch.optim.Optimizer:
    groups = groups if groups is not None else param_groups(model, weight_decay)
    on_cuda = next(model.parameters()).is_cuda
    # fused kernels on GPU; the multi-tensor (foreach) path on CPU
    fast = {"fused": True} if on_cuda else {"foreach": True}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fast)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fast)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to `min_ratio` (or constant). Plateau scaling is applied apart."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule != "cosine":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Plateau:
    """ReduceLROnPlateau / EarlyStopping bookkeeping (Keras semantics) that serialises to a dict."""

    def __init__(self, mode: str, factor: float = 0.5, patience: int = 5, min_delta: float = 1e-4):
        self.mode, self.factor, self.patience, self.min_delta = mode, factor, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.scale = 1.0

    def improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record an epoch's value; True when it improved."""
        if self.improved(value):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    def reduce_if_stalled(self) -> bool:
        if self.wait >= self.patience:
            self.scale *= self.factor
            self.wait = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.scale = float(state["best"]), int(state["wait"]), float(state["scale"])
