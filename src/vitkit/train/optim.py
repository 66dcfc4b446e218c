"""Optimisers with the usual weight-decay exclusions, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and head (BEiT/MAE)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "stem")):
        return 0
    return depth + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 0.0,
    head_scale: float = 1.0,
    freeze_backbone: bool = False,
) -> list[dict]:
    """No weight decay for norms, biases (all 1-D tensors) and position embeddings / class tokens.
    Each group carries `lr_scale`: layer-wise decay (layer_decay ** distance from the top) and the
    head's own scale; a frozen backbone leaves only the head trainable."""
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        is_head = name.startswith("head.")
        if freeze_backbone and not is_head:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        scale = head_scale if is_head else 1.0
        if layer_decay and not is_head:
            scale *= layer_decay ** (depth + 1 - layer_id(name, depth))
        no_decay = p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES)
        groups.setdefault((no_decay, scale), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
        for (no_decay, scale), params in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float, groups: list[dict]
) -> torch.optim.Optimizer:
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
    if schedule not in ("cosine", "linear"):
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":  # the Hugging Face Trainer's default: straight to zero
        return 1.0 - progress
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
