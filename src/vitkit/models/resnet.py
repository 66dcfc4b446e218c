"""ResNet baselines: the CIFAR-style ResNet-18 (He et al., 2016) and ResNet-50 v2, the
pre-activation bottleneck network (He et al., "Identity Mappings in Deep Residual Networks"), which
the Keras ViT example uses as its from-scratch comparison point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ImageClassifier
from .layers import check_channels
from .registry import ModelConfig, register_family, register_model

BLOCKS = ("basic", "preact_bottleneck")
STEMS = ("cifar", "imagenet")


@dataclass
class ResNetConfig(ModelConfig):
    block: str = "basic"  # basic (post-activation) | preact_bottleneck (v2)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "cifar"  # cifar: 3x3 stride 1; imagenet: 7x7 stride 2 + max-pool
    head_dropout: float = 0.0


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != width:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """BN-ReLU before each convolution; the shortcut branches off after the first BN-ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


@register_family("resnet")
class ResNet(ImageClassifier):
    config_class = ResNetConfig

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        if cfg.block not in BLOCKS:
            raise ValueError(f"block={cfg.block!r} is not one of {', '.join(BLOCKS)}")
        if cfg.stem not in STEMS:
            raise ValueError(f"stem={cfg.stem!r} is not one of {', '.join(STEMS)}")
        self.config = cfg
        block = BasicBlock if cfg.block == "basic" else PreActBottleneck
        stem_width = cfg.widths[0]
        if cfg.stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, stem_width, 3, 1, 1, bias=False))
        else:
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, stem_width, 7, 2, 3, bias=False))
        if block is BasicBlock:  # post-activation: the stem carries its own BN-ReLU
            self.stem.append(nn.BatchNorm2d(stem_width))
            self.stem.append(nn.ReLU(inplace=True))
        if cfg.stem == "imagenet":
            self.stem.append(nn.MaxPool2d(3, 2, 1))
        stages, in_ch = [], stem_width
        for i, (depth, width) in enumerate(zip(cfg.layers, cfg.widths)):
            for j in range(depth):
                stages.append(block(in_ch, width, 2 if (j == 0 and i > 0) else 1))
                in_ch = width * block.expansion
        self.stages = nn.Sequential(*stages)
        # v2 networks end with the BN-ReLU that the last pre-activation block leaves out
        self.final_act = (
            nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)) if block is PreActBottleneck else nn.Identity()
        )
        self.init_head(in_ch, dropout=cfg.head_dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.config.in_chans)
        return self.final_act(self.stages(self.stem(x)))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    @property
    def num_layers(self) -> int:
        return len(self.stages)

    def layer_id(self, param_name: str) -> int:
        """0 for the stem, 1..num_layers for the residual blocks in order, then the final BN and head."""
        if param_name.startswith("stem."):
            return 0
        if param_name.startswith("stages."):
            return int(param_name.split(".")[1]) + 1
        return self.num_layers + 1

    def set_image_size(self, image_size: int) -> None:
        self.config.image_size = image_size  # fully convolutional: any size works


register_model("resnet18_cifar", "resnet", ResNetConfig(image_size=32, num_classes=10))
register_model("resnet50v2", "resnet", ResNetConfig(block="preact_bottleneck", layers=(3, 4, 6, 3), stem="imagenet"))
register_model(
    "resnet50v2_cifar",
    "resnet",
    ResNetConfig(image_size=32, num_classes=10, block="preact_bottleneck", layers=(3, 4, 6, 3), stem="cifar"),
)
