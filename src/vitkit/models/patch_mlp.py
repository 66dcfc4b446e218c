"""The classifier shared by the all-MLP families (MLP-Mixer, FNet, gMLP).

image -> patches -> linear embedding (+ optional learned position embedding) -> depth x block
      -> [LN] -> global average pool -> dropout -> Linear

Each family supplies only its block; this is the "shared classifier" of the Keras MLP example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import VitkitError
from .base import ImageClassifier, block_layer_id
from .layers import PatchEmbed, drop_path_rates, init_linear_weights


@dataclass
class PatchMLPConfig:
    patch_size: int = 16
    embed_dim: int = 512
    depth: int = 8
    dropout: float = 0.0  # inside the blocks
    head_dropout: float = 0.0
    pos_embed: bool = False
    final_norm: bool = True  # the Keras example pools the last block's output directly
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6


class PatchMLPClassifier(ImageClassifier):
    """Subclasses set `block`, a module class built as block(cfg, num_patches, drop_path)."""

    block: type[nn.Module]
    no_weight_decay_names = ("pos_embed",)

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, cfg.embed_dim)) if cfg.pos_embed else None
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = nn.ModuleList(self.block(cfg, num_patches, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.init_head(cfg.embed_dim, dropout=cfg.head_dropout)
        self.apply(init_linear_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.init_block_weights()

    def init_block_weights(self) -> None:
        """Hook for family-specific initialisation that must run after the generic one."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    def layer_id(self, param_name: str) -> int:
        return block_layer_id(param_name, ("patch_embed", "pos_embed"), self.num_layers)

    def set_image_size(self, image_size: int) -> None:
        if image_size != self.config.image_size:
            raise VitkitError(
                f"{self.family} mixes tokens with weights sized to the patch count, so image_size "
                f"is fixed at {self.config.image_size}: resize the images instead"
            )
