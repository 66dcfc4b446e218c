"""MLP-Mixer (Tolstikhin et al., 2021): alternate an MLP across patches and an MLP across channels.

block: x + TokenMLP(LN(x)^T)^T ; x + ChannelMLP(LN(x))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import DropPath, Mlp
from .patch_mlp import PatchMLPClassifier, PatchMLPConfig
from .registry import ModelConfig, register_family, register_model


@dataclass
class MixerConfig(ModelConfig, PatchMLPConfig):
    token_mlp_dim: int | None = None  # None: num_patches (the Keras example)
    channel_mlp_dim: int | None = None  # None: num_patches (the Keras example)
    share_norm: bool = False  # one LayerNorm before both MLPs, as the Keras example's block has


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerConfig, num_patches: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.token_mlp = Mlp(num_patches, cfg.token_mlp_dim or num_patches, num_patches, out_dropout=cfg.dropout)
        self.norm2 = None if cfg.share_norm else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.channel_mlp = Mlp(cfg.embed_dim, cfg.channel_mlp_dim or num_patches, out_dropout=cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        norm2 = self.norm1 if self.norm2 is None else self.norm2
        return x + self.drop_path(self.channel_mlp(norm2(x)))


@register_family("mixer")
class Mixer(PatchMLPClassifier):
    config_class = MixerConfig
    block = MixerBlock


register_model(
    "mixer_micro_patch4_32",
    "mixer",
    MixerConfig(
        image_size=32, num_classes=10, patch_size=4, embed_dim=128, depth=4, token_mlp_dim=64, channel_mlp_dim=512
    ),
)
register_model(
    "mixer_tiny_patch4_32",
    "mixer",
    MixerConfig(
        image_size=32,
        num_classes=10,
        patch_size=4,
        embed_dim=256,
        depth=8,
        token_mlp_dim=128,
        channel_mlp_dim=1024,
        drop_path_rate=0.1,
    ),
)
# Paper sizes (Mixer-S/16, Mixer-B/16 at 224 px).
register_model(
    "mixer_s16_224",
    "mixer",
    MixerConfig(patch_size=16, embed_dim=512, depth=8, token_mlp_dim=256, channel_mlp_dim=2048),
)
register_model(
    "mixer_b16_224",
    "mixer",
    MixerConfig(patch_size=16, embed_dim=768, depth=12, token_mlp_dim=384, channel_mlp_dim=3072),
)
