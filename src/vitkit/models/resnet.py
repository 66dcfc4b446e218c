"""ResNet baselines: the CIFAR-style ResNet-18 (He et al., 2016) and ResNet-50 v2, the
pre-activation bottleneck network (He et al., "Identity Mappings in Deep Residual Networks"), which
the Keras ViT example uses as its from-scratch comparison point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import VitkitError
from .base import ImageClassifier
from .layers import Tokenizer, check_channels
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


def init_convs(module: nn.Module) -> None:
    """He initialisation (fan-out, ReLU) of every convolution, as in the ResNet paper."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


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


class ResNetTokenizer(Tokenizer):
    """The ViT paper's hybrid input (Dosovitskiy et al., 2021, section 3.1): ResNet stages turn the
    image into a feature map whose cells are the tokens. A 3x3 stem and a stage of `blocks` basic blocks
    at full resolution, then `stages` stages that each halve the resolution and double the width, and
    a 1x1 projection to the model width (as the paper's R50 hybrid: ResNet stages, then tokens). On small
    images this gives the transformer the convolutional inductive bias of the ResNet's early layers,
    where the (cheaper) CCT tokenizer leaves a gap to the ResNet at short budgets.

    With `token_stride=2` the projection is a strided 3x3 convolution that does the last halving, in
    place of the last stage of blocks: the transformer takes over the ResNet's last stage (as the
    paper's hybrid drops R50's) and still sees the same grid of tokens."""

    def __init__(
        self,
        image_size: int,
        in_chans: int,
        dim: int,
        stages: int = 2,
        width: int = 32,
        blocks: int = 1,
        token_stride: int = 1,
    ):
        if token_stride not in (1, 2) or (token_stride == 2 and stages < 1):
            raise VitkitError(f"stem_token_stride={token_stride} must be 1, or 2 with conv_layers >= 1")
        super().__init__(image_size, 2**stages, in_chans)
        self.blocks, self.token_stride = blocks, token_stride
        layers = [nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        halving_stages = stages - (token_stride - 1)  # the projection does the last halving with stride 2
        widths = [width * 2**i for i in range(halving_stages + 1)]
        self.widths = widths
        for i, stage_width in enumerate(widths):
            for j in range(blocks):
                in_width = widths[max(0, i - 1)] if j == 0 else stage_width
                layers.append(BasicBlock(in_width, stage_width, 2 if (j == 0 and i > 0) else 1))
        self.convs = nn.Sequential(*layers)
        init_convs(self.convs)
        # the token projection keeps the ViT's patch init
        kernel = 2 * token_stride - 1
        self.convs.append(nn.Conv2d(widths[-1], dim, kernel, token_stride, kernel // 2))

    def describe(self) -> str:
        projection = ", then a strided 3x3 token projection" if self.token_stride == 2 else ""
        widths = "-".join(map(str, self.widths))
        return f"ResNet stages ({widths} wide, {self.blocks} basic block(s) each{projection})"

    def grid_for(self, image_size: int) -> int:
        """Each strided 3x3 convolution (padding 1) maps n pixels to ceil(n / 2): 28 px gives 4x4 tokens."""
        if image_size <= 0:
            raise VitkitError(f"image_size ({image_size}) must be positive")
        for _ in range(self.stride.bit_length() - 1):
            image_size = -(-image_size // 2)
        return image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.in_chans)
        return self.convs(x).flatten(2).transpose(1, 2)


@register_family("resnet")
class ResNet(ImageClassifier):
    config_class = ResNetConfig

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        if cfg.block not in BLOCKS:
            raise VitkitError(f"block={cfg.block!r} is not one of {', '.join(BLOCKS)}")
        if cfg.stem not in STEMS:
            raise VitkitError(f"stem={cfg.stem!r} is not one of {', '.join(STEMS)}")
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
        init_convs(self)

    @property
    def architecture(self) -> str:
        cfg = self.config
        block = "basic blocks" if cfg.block == "basic" else "pre-activation bottlenecks"
        return f"ResNet: {len(cfg.layers)} stages of {block} ({'-'.join(map(str, cfg.widths))} wide, {cfg.layers})"

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
