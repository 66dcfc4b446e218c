"""A small VGG-style network for fast CIFAR training, after airbench94 (Jordan, 2024, "94% on CIFAR-10 in
3.29 Seconds on a Single GPU", arXiv 2404.00498):

image -> 2x2 convolution (no padding; its filters set by whitening the training patches, see
`ImageClassifier.init_whitening`, and kept fixed; airbench trains its bias for 3 epochs, see
--freeze-after) -> GELU
      -> one group per width: [3x3 conv -> 2x2 max-pool -> BN -> GELU -> 3x3 conv -> BN -> GELU]
      -> global max-pool -> Linear (no bias) -> logits scaled down by `logit_scale`

The BatchNorms have a shift but no trained scale (a scale after a bias-free convolution only resizes
weights that weight decay then pulls back), and every 3x3 convolution starts as an identity on its
first channels (Dirac init), so the untrained network passes the whitened image through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import VitkitError
from .base import ImageClassifier
from .layers import check_channels
from .registry import ModelConfig, register_family, register_model


@dataclass
class FastNetConfig(ModelConfig):
    widths: tuple[int, ...] = (64, 256, 256)
    whiten_width: int = 24  # filters of the first convolution: 2x its 2x2x3 patch dimensions covers +/- each
    whiten_kernel: int = 2
    freeze_whitening: bool = True  # the first convolution's filters stay as whitening set them (bias trains)
    logit_scale: float = 1 / 9
    bn_momentum: float = 0.4  # torch's convention (weight of the new batch): fast, for short runs
    bn_eps: float = 1e-5  # torch's default; airbench's is 1e-12 (the cifar-fast preset's)


def batch_norm(width: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(width, eps=eps, momentum=momentum)
    bn.weight.requires_grad_(False)  # shift only: the scale stays 1
    return bn


class ConvGroup(nn.Sequential):
    def __init__(self, in_ch: int, width: int, momentum: float, eps: float):
        super().__init__(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            batch_norm(width, momentum, eps),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            batch_norm(width, momentum, eps),
            nn.GELU(),
        )
        for conv in (self[0], self[4]):
            nn.init.dirac_(conv.weight[: conv.in_channels])


@register_family("fastnet")
class FastNet(ImageClassifier):
    config_class = FastNetConfig

    def __init__(self, cfg: FastNetConfig):
        super().__init__()
        if not cfg.widths:
            raise VitkitError("widths must name at least one group width")
        self.config = cfg
        self.whiten = nn.Conv2d(cfg.in_chans, cfg.whiten_width, cfg.whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(not cfg.freeze_whitening)
        self.act = nn.GELU()
        groups, in_ch = [], cfg.whiten_width
        for width in cfg.widths:
            groups.append(ConvGroup(in_ch, width, cfg.bn_momentum, cfg.bn_eps))
            in_ch = width
        self.blocks = nn.Sequential(*groups)
        self.init_head(in_ch)
        self.head.bias = None

    @property
    def architecture(self) -> str:
        cfg = self.config
        return (
            f"FastNet: {cfg.whiten_kernel}x{cfg.whiten_kernel} whitening convolution ({cfg.whiten_width} filters), "
            f"{len(cfg.widths)} conv groups ({'-'.join(map(str, cfg.widths))} wide), max-pooled"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.config.in_chans)
        return self.blocks(self.act(self.whiten(x)))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.amax(dim=(2, 3))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return super().forward_head(pooled) * self.config.logit_scale

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        self.head.bias = None

    def layer_id(self, param_name: str) -> int:
        """0 for the whitening convolution, 1..num_layers for the conv groups, then the head."""
        if param_name.startswith("whiten."):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return self.num_layers + 1

    def set_image_size(self, image_size: int) -> None:
        self.config.image_size = image_size  # fully convolutional with a global pool: any size works


register_model("fastnet_cifar", "fastnet", FastNetConfig(image_size=32, num_classes=10))
