"""The contract every model family implements, so that training, fine-tuning, export and explanation
never need to know which family they hold.

A model takes NCHW float images and returns logits (B, num_classes). Its classifier is named as timm
names it: `pre_logits` (hidden head layers, or Identity) -> `head_drop` -> `head` (the final Linear),
so timm checkpoints load without renames. Families provide `forward_features`, `pool` and
`set_image_size`, and say which parameters are layers for layer-wise learning-rate decay.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..errors import VitkitError
from .layers import whiten_conv_
from .registry import ModelConfig

HEAD_PREFIXES = ("pre_logits.", "head_drop.", "head.")
FAMILY_TITLES = {
    "vit": "ViT",
    "mixer": "MLP-Mixer",
    "fnet": "FNet",
    "gmlp": "gMLP",
    "resnet": "ResNet",
    "fastnet": "FastNet",
}
_OLD_HEAD_KEY = re.compile(r"^head\.(\d+)\.(weight|bias)$")


def build_head(in_features: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.0):
    """(pre_logits, head_drop, head): dropout before every Linear, GELU between hidden layers (the
    Keras ViT head when hidden is set)."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, units), nn.GELU()]
        width = units
    pre_logits = nn.Sequential(*layers) if layers else nn.Identity()
    return pre_logits, nn.Dropout(dropout), nn.Linear(width, num_classes)


class ImageClassifier(nn.Module):
    """Base class of every family. Subclasses set `config_class`, build `self.config`, call
    `self.init_head(...)` and implement `forward_features` and `pool`."""

    family: str  # set by registry.register_family; stored in checkpoints
    config_class: type[ModelConfig]
    config: ModelConfig
    # parameter names never weight-decayed besides 1-D tensors (norms, biases)
    no_weight_decay_names: tuple[str, ...] = ()

    def init_head(self, in_features: int, hidden: tuple[int, ...] = (), dropout: float = 0.0) -> None:
        self.pre_logits, self.head_drop, self.head = build_head(in_features, self.config.num_classes, hidden, dropout)
        self.register_load_state_dict_pre_hook(_rename_sequential_head)

    # -- forward -------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.pre_logits(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.pool(self.forward_features(x)))

    @property
    def patch_size(self) -> int | None:
        """Side of the square patches the model cuts its input into, one token each; None for models
        that do not: convolutional ones, and token models with a convolutional stem, whose tokens are
        cells of a feature map rather than patches of the image."""
        tokenizer = getattr(self, "patch_embed", None)
        return tokenizer.stride if getattr(tokenizer, "cuts_patches", False) else None

    @property
    def architecture(self) -> str:
        """What the network is, in words, as run records and summaries state it: the token families say
        how the image becomes tokens (patches, a convolutional tokenizer, ResNet stages) and what follows."""
        tokenizer = getattr(self, "patch_embed", None)
        title = FAMILY_TITLES.get(self.family, self.family)
        if tokenizer is None:
            return title
        grid = tokenizer.grid_size
        return (
            f"{title}: {tokenizer.describe()} -> {grid}x{grid} tokens, {self.num_layers} blocks of width "
            f"{self.config.embed_dim}"
        )

    @property
    def attention_layers(self) -> list[nn.Module]:
        """Self-attention modules in depth order, for attention maps; empty for families without."""
        return []

    # -- initialisation from data --------------------------------------------------------
    def first_conv(self) -> nn.Conv2d | None:
        """The convolution that sees the image's pixels, for whitening: every family declares its stem
        (patch embedding, tokenizer, ResNet stem) before its trunk, so it is the first one over the input
        channels; None where the stem has none (shifted patches project with a Linear)."""
        channels = self.config.in_chans
        return next((m for m in self.modules() if isinstance(m, nn.Conv2d) and m.in_channels == channels), None)

    def init_whitening(self, images: torch.Tensor) -> None:
        """Initialise the first convolution as the whitening transform of `images`' patches (normalised
        model inputs, NCHW): see layers.whiten_conv_."""
        conv = self.first_conv()
        if conv is None:
            raise VitkitError(
                f"{self.architecture} has no convolution on the image's pixels to whiten: drop --whiten-init"
            )
        whiten_conv_(conv, images)

    # -- adapting to a new task ----------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised final Linear for `num_classes` (hidden head layers are kept)."""
        self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight.device)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.config.num_classes = num_classes

    def set_image_size(self, image_size: int) -> None:
        raise NotImplementedError

    # -- optimisation --------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay beyond norms and biases."""
        return {name for name, _ in self.named_parameters() if name.split(".")[0] in self.no_weight_decay_names}

    def norm_parameters(self) -> set[str]:
        """Names of the normalisation layers' parameters (BatchNorm, LayerNorm, GroupNorm scales and shifts)."""
        norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
        return {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in self.named_modules()
            if isinstance(module, norms)
            for name, _ in module.named_parameters(recurse=False)
        }

    @staticmethod
    def is_classifier(param_name: str) -> bool:
        """The head (everything after pooling): trained alone by a linear probe, given its own lr."""
        return param_name.startswith(HEAD_PREFIXES)

    @property
    def num_layers(self) -> int:
        """Layers between the embedding (layer 0) and the classifier (layer num_layers + 1): the token
        families' blocks; families without `blocks` say what theirs are."""
        return len(self.blocks)

    def layer_id(self, param_name: str) -> int:
        """0 for the stem/embeddings, 1..num_layers for the trunk, num_layers + 1 for what follows
        (final norm, head): the BEiT/MAE layer-wise decay convention."""
        raise NotImplementedError


def block_layer_id(param_name: str, stem_names: tuple[str, ...], num_layers: int) -> int:
    """layer_id for models whose trunk is `blocks.<i>.*` (ViT and the all-MLP families)."""
    if param_name.startswith("blocks."):
        return int(param_name.split(".")[1]) + 1
    if param_name.split(".")[0] in stem_names:
        return 0
    return num_layers + 1


def _rename_sequential_head(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the head was named (an nn.Sequential `head.<i>`) load unchanged:
    the last Linear becomes `head`, the hidden layers keep their indices under `pre_logits`."""
    old = {k: m for k in list(state_dict) if k.startswith(prefix) and (m := _OLD_HEAD_KEY.match(k[len(prefix) :]))}
    if not old:
        return
    last = max(int(m.group(1)) for m in old.values())
    for key, m in old.items():
        index, param = int(m.group(1)), m.group(2)
        new = f"head.{param}" if index == last else f"pre_logits.{index}.{param}"
        state_dict[prefix + new] = state_dict.pop(key)
