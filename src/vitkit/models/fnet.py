"""FNet (Lee-Thorp et al., 2022): replace attention with the real part of a 2D Fourier transform.

block (post-norm, as in the paper and the Keras example):
    x = LN(x + Re(FFT2(x)))   over (patches, channels)
    x = LN(x + FFN(x))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import DropPath, Mlp
from .patch_mlp import PatchMLPClassifier, PatchMLPConfig
from .registry import ModelConfig, register_family, register_model


@dataclass
class FNetConfig(ModelConfig, PatchMLPConfig):
    ffn_dim: int | None = None  # None: embed_dim (the Keras example)


class FourierMixing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cuFFT/pocketfft have no bf16 kernels: transform in fp32 and cast back
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.to(x.dtype)


class FNetBlock(nn.Module):
    def __init__(self, cfg: FNetConfig, num_patches: int, drop_path: float):
        super().__init__()
        self.mixing = FourierMixing()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.ffn = Mlp(cfg.embed_dim, cfg.ffn_dim or cfg.embed_dim, hidden_dropout=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.mixing(x)))
        return self.norm2(x + self.drop_path(self.ffn(x)))


@register_family("fnet")
class FNet(PatchMLPClassifier):
    config_class = FNetConfig
    block = FNetBlock


register_model(
    "fnet_micro_patch4_32",
    "fnet",
    FNetConfig(image_size=32, num_classes=10, patch_size=4, embed_dim=128, depth=4, ffn_dim=512, pos_embed=True),
)
register_model(
    "fnet_tiny_patch4_32",
    "fnet",
    FNetConfig(image_size=32, num_classes=10, patch_size=4, embed_dim=256, depth=8, ffn_dim=1024, pos_embed=True),
)
