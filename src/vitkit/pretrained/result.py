"""What loading a pretrained checkpoint yields."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..data.preprocess import Preprocessing


@dataclass
class Pretrained:
    """A pretrained model with the preprocessing it was trained with, its class names when the
    checkpoint names them, and whether its classifier head came with the weights."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str] | None
    has_head: bool
