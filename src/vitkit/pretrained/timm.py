"""timm and DeiT ViT checkpoints -> vitkit's ViT.

timm's key layout is vitkit's own (heads included: `pre_logits`, `head_drop`, `head`); the
architecture is read off the tensor shapes. The one thing shapes cannot tell is the head
count: standard ViTs use 64 channels per head, so that is the default (override with num_heads).
"""

from __future__ import annotations

import math

import torch

from ..data.preprocess import Preprocessing
from ..errors import VitkitError
from ..models.vit import ViT, ViTConfig
from .checks import check_keys
from .result import Pretrained

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TIMM_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT
SIZE_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}


def is_timm_state(state: dict) -> bool:
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.0.") for k in state)


def heads_from_name(name: str | None) -> int | None:
    for size, heads in SIZE_HEADS.items():
        if name and f"_{size}_" in name:
            return heads
    return None


def vit_config_from_timm(state: dict[str, torch.Tensor], num_heads: int | None = None) -> ViTConfig:
    unsupported = sorted(
        k
        for k in state
        if k.startswith(("dist_token", "head_dist", "reg_token", "fc_norm")) or ".ls1." in k or ".ls2." in k
    )
    if unsupported:
        raise VitkitError(
            f"this ViT variant is not supported (keys {', '.join(unsupported[:6])}): vitkit loads plain "
            "class-token ViTs and DeiT without distillation token"
        )
    proj = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    class_token = "cls_token" in state
    tokens = state["pos_embed"].shape[1] - int(class_token)
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise VitkitError(f"position table of {tokens} patches is not a square grid")
    head = state.get("head.weight")
    return ViTConfig(
        num_classes=head.shape[0] if head is not None else 1,
        image_size=grid * patch,
        in_chans=in_chans,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or max(1, embed_dim // 64),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token=class_token,
        pool="cls" if class_token else "mean",
    )


def timm_to_vitkit(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    expected = {k for k in ViT(cfg).state_dict()}
    if "head.weight" not in state:  # a backbone without a classifier (num_classes=0 in timm)
        expected -= {"head.weight", "head.bias"}
    check_keys(set(state), expected, "timm/DeiT ViT")
    return dict(state)


def preprocessing_from_timm(cfg: ViTConfig, pretrained_cfg: dict | None) -> Preprocessing:
    """timm's pretrained_cfg (input_size, crop_pct, crop_mode, interpolation, mean, std), with timm's
    own defaults (crop_pct 0.875, bicubic, ImageNet statistics) for what it leaves out."""
    pre_cfg = pretrained_cfg or {}
    return Preprocessing(
        image_size=int(pre_cfg.get("input_size", [cfg.in_chans, cfg.image_size, cfg.image_size])[-1]),
        mode="stretch" if pre_cfg.get("crop_mode") == "squash" else "crop",
        crop_pct=float(pre_cfg.get("crop_pct") or TIMM_CROP_PCT),
        resample=pre_cfg.get("interpolation") or "bicubic",
        mean=pre_cfg.get("mean", IMAGENET["mean"]),
        std=pre_cfg.get("std", IMAGENET["std"]),
        channels=cfg.in_chans,
    )


def load_timm_state(
    state: dict[str, torch.Tensor], num_heads: int | None = None, pretrained_cfg: dict | None = None
) -> Pretrained:
    cfg = vit_config_from_timm(state, num_heads)
    model = ViT(cfg)
    mapped = timm_to_vitkit(state, cfg)
    has_head = "head.weight" in mapped
    model.load_state_dict(mapped, strict=has_head)
    return Pretrained(model, preprocessing_from_timm(cfg, pretrained_cfg), None, has_head)
