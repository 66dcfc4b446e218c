"""gMLP (Liu et al., 2021, "Pay Attention to MLPs"): channel MLP with a spatial gating unit.

block: x + Proj_out( u * SpatialLinear(LN(v)) ),  [u, v] = split(GELU(Proj_in(LN(x))))
(`shortcut="normed"`: LN(x) + ..., the Keras example's block, which its seed preset reproduces)
The spatial Linear mixes across patches; its bias starts at one and its weight near zero, so each
block starts as a plain feed-forward layer (the paper's initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import VitkitError
from .layers import DropPath
from .patch_mlp import PatchMLPClassifier, PatchMLPConfig
from .registry import ModelConfig, register_family, register_model


@dataclass
class GMLPConfig(ModelConfig, PatchMLPConfig):
    ffn_dim: int | None = None  # width before the split into u and v; None: 2 * embed_dim (Keras)
    # what the block's output is added to: "input" (the paper) or "normed", its LayerNorm's output (the
    # Keras example, whose preset keras-gmlp-cifar100 reproduces it)
    shortcut: str = "input"


class SpatialGatingUnit(nn.Module):
    def __init__(self, dim: int, num_patches: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.spatial = nn.Linear(num_patches, num_patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.spatial(self.norm(v).transpose(1, 2)).transpose(1, 2)
        return u * v


class GMLPBlock(nn.Module):
    def __init__(self, cfg: GMLPConfig, num_patches: int, drop_path: float):
        super().__init__()
        hidden = cfg.ffn_dim or 2 * cfg.embed_dim
        if hidden % 2:
            raise VitkitError(f"ffn_dim={hidden} must be even: it is split into two halves")
        if cfg.shortcut not in ("input", "normed"):
            raise VitkitError(f"shortcut={cfg.shortcut!r}: use input (the paper's) or normed (the Keras example's)")
        self.shortcut_from_norm = cfg.shortcut == "normed"
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.proj_in = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.sgu = SpatialGatingUnit(hidden // 2, num_patches, cfg.norm_eps)
        self.proj_out = nn.Linear(hidden // 2, cfg.embed_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        y = self.drop(self.act(self.proj_in(normed)))
        return (normed if self.shortcut_from_norm else x) + self.drop_path(self.proj_out(self.sgu(y)))


@register_family("gmlp")
class GMLP(PatchMLPClassifier):
    config_class = GMLPConfig
    block = GMLPBlock

    def init_block_weights(self) -> None:
        for block in self.blocks:
            nn.init.normal_(block.sgu.spatial.weight, std=1e-6)
            nn.init.ones_(block.sgu.spatial.bias)


register_model(
    "gmlp_micro_patch4_32",
    "gmlp",
    GMLPConfig(image_size=32, num_classes=10, patch_size=4, embed_dim=128, depth=4, ffn_dim=512),
)
register_model(
    "gmlp_tiny_patch4_32",
    "gmlp",
    GMLPConfig(image_size=32, num_classes=10, patch_size=4, embed_dim=192, depth=12, ffn_dim=1152, drop_path_rate=0.1),
)
register_model(
    "gmlp_s16_224", "gmlp", GMLPConfig(patch_size=16, embed_dim=256, depth=30, ffn_dim=1536, drop_path_rate=0.05)
)
