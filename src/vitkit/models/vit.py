"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

image -> patches -> linear embedding (+ class token) + learned position embedding
      -> depth x pre-norm blocks [x + Attn(LN(x)); x + MLP(LN(x))] -> LN -> pool -> head

One class covers the paper's ViT, the Keras example (no class token, flatten + MLP head, attention
inner width larger than the model width) and the D2L model (class token, LN + Linear head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import VitkitError
from .base import ImageClassifier, block_layer_id
from .layers import (
    Attention,
    ConvTokenizer,
    DropPath,
    Mlp,
    PatchEmbed,
    ShiftedPatchTokenizer,
    drop_path_rates,
    init_linear_weights,
    resize_pos_embed,
)
from .registry import ModelConfig, register_family, register_model
from .resnet import ResNetTokenizer

POOLS = ("cls", "mean", "flatten", "seq")
STEMS = ("patch", "conv", "spt", "resnet")


@dataclass
class ViTConfig(ModelConfig):
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    head_dim: int | None = None  # None: embed_dim // num_heads
    mlp_dim: int | None = None  # None: 4 * embed_dim
    mlp_final_activation: bool = False  # GELU after the second MLP layer too (Keras examples)
    qkv_bias: bool = True
    class_token: bool = True
    pool: str = "cls"  # cls | mean | flatten | seq (CCT's attention-weighted sequence pooling)
    head_hidden: tuple[int, ...] = ()  # MLP head widths before the classifier (Keras: 2048, 1024)
    head_dropout: float = 0.0
    embed_dropout: float = 0.0
    drop_rate: float = 0.0  # dropout inside the MLPs
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing with depth
    norm_eps: float = 1e-6
    # small-data options (all off in the paper's ViT and in the seed presets)
    stem: str = "patch"  # patch | conv (CCT tokenizer) | spt (shifted patch tokenization) | resnet (hybrid)
    conv_layers: int = 2  # conv/resnet stem depth: tokens are image_size / 2**conv_layers apart
    stem_width: int = 64  # conv stem: hidden channels; resnet stem: width of its first stage
    stem_blocks: int = 1  # resnet stem: basic blocks per stage
    stem_token_stride: int = 1  # resnet stem: 2 makes the token projection do the last halving (3x3, stride 2)
    lsa: bool = False  # locality self-attention


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(
            cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.qkv_bias, cfg.attn_drop_rate, locality=cfg.lsa
        )
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(
            cfg.embed_dim,
            cfg.mlp_dim or 4 * cfg.embed_dim,
            hidden_dropout=cfg.drop_rate,
            out_dropout=cfg.drop_rate,
            final_activation=cfg.mlp_final_activation,
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_family("vit")
class ViT(ImageClassifier):
    config_class = ViTConfig
    no_weight_decay_names = ("pos_embed", "cls_token")

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.pool not in POOLS:
            raise VitkitError(f"pool={cfg.pool!r} is not one of {', '.join(POOLS)}")
        if cfg.pool == "cls" and not cfg.class_token:
            raise VitkitError("pool='cls' needs class_token=True: set class_token or use pool='mean'")
        if cfg.stem not in STEMS:
            raise VitkitError(f"stem={cfg.stem!r} is not one of {', '.join(STEMS)}")
        self.config = cfg
        self.patch_embed = self._tokenizer(cfg)
        self.num_prefix_tokens = int(cfg.class_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.embed_dropout)
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        pooled = cfg.embed_dim * num_tokens if cfg.pool == "flatten" else cfg.embed_dim
        # no bias: it would shift every token's score alike, which the softmax over tokens cancels
        self.seq_pool = nn.Linear(cfg.embed_dim, 1, bias=False) if cfg.pool == "seq" else None
        self.init_head(pooled, cfg.head_hidden, cfg.head_dropout)
        self.apply(init_linear_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.register_load_state_dict_pre_hook(self._adapt_pos_embed)
        self.register_load_state_dict_pre_hook(_drop_seq_pool_bias)

    @staticmethod
    def _tokenizer(cfg: ViTConfig, image_size: int | None = None) -> nn.Module:
        size = image_size or cfg.image_size
        if cfg.stem == "conv":
            return ConvTokenizer(size, cfg.in_chans, cfg.embed_dim, cfg.conv_layers, cfg.stem_width)
        if cfg.stem == "resnet":
            return ResNetTokenizer(
                size,
                cfg.in_chans,
                cfg.embed_dim,
                cfg.conv_layers,
                cfg.stem_width,
                cfg.stem_blocks,
                cfg.stem_token_stride,
            )
        if cfg.stem == "spt":
            return ShiftedPatchTokenizer(size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        return PatchEmbed(size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised token sequence (B, prefix + num_patches, embed_dim)."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "cls":
            return tokens[:, 0]
        if self.config.pool == "mean":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
        if self.config.pool == "seq":
            weights = self.seq_pool(tokens).softmax(dim=1)  # (B, N, 1)
            return (weights * tokens).sum(dim=1)
        return tokens.flatten(1)

    def layer_id(self, param_name: str) -> int:
        return block_layer_id(param_name, ("patch_embed", "cls_token", "pos_embed"), self.num_layers)

    @property
    def architecture(self) -> str:
        """The ViT paper calls a ViT whose tokens are cells of a ResNet's feature map a hybrid; a small
        convolutional tokenizer with sequence pooling is CCT (Hassani et al., 2021)."""
        cfg, grid = self.config, self.patch_embed.grid_size
        kind = {"resnet": "hybrid ViT", "conv": "CCT-style ViT"}.get(cfg.stem, "ViT")
        pool = {"seq": "sequence pooling", "cls": "class token", "mean": "mean pooling", "flatten": "flattened"}
        return (
            f"{kind}: {self.patch_embed.describe()} -> {grid}x{grid} tokens, {cfg.depth} transformer blocks of "
            f"width {cfg.embed_dim}, {pool[cfg.pool]}"
        )

    @property
    def attention_layers(self) -> list[nn.Module]:
        """The blocks' attention modules in order (for attention rollout)."""
        return [block.attn for block in self.blocks]

    def set_image_size(self, image_size: int) -> None:
        """Run at another resolution: the position table is interpolated (class token kept)."""
        if image_size == self.config.image_size:
            return
        if self.config.pool == "flatten":
            raise VitkitError(
                "pool='flatten' ties the head to the token count, so image_size cannot change; "
                "use pool='mean' or 'cls' to run at another resolution"
            )
        grid = self.patch_embed.grid_for(image_size)
        self.pos_embed = nn.Parameter(resize_pos_embed(self.pos_embed.data, grid, self.num_prefix_tokens))
        self.patch_embed.grid_size, self.patch_embed.num_patches = grid, grid * grid
        self.config.image_size = image_size

    def _adapt_pos_embed(self, module, state_dict, prefix, *args) -> None:
        """Checkpoints trained at another resolution load with an interpolated position table."""
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape and self.config.pool != "flatten":
            state_dict[key] = resize_pos_embed(state_dict[key], self.patch_embed.grid_size, self.num_prefix_tokens)


def _drop_seq_pool_bias(module, state_dict, prefix, *args) -> None:
    """Checkpoints from before the sequence pool lost its bias load unchanged: the bias never affected
    the output (see `ViT.__init__`)."""
    state_dict.pop(prefix + "seq_pool.bias", None)


def _vit(**kw) -> ViTConfig:
    return ViTConfig(**kw)


# Hugging Face / timm shapes (ViT-Ti/S/B at patch 16, 224 px).
register_model("vit_tiny_patch16_224", "vit", _vit(embed_dim=192, depth=12, num_heads=3))
register_model("vit_small_patch16_224", "vit", _vit(embed_dim=384, depth=12, num_heads=6))
register_model("vit_base_patch16_224", "vit", _vit(embed_dim=768, depth=12, num_heads=12))
# Small-image variants for 28-32 px inputs: patch 4 gives 64 tokens at 32 px.
register_model(
    "vit_micro_patch4_32",
    "vit",
    _vit(
        image_size=32,
        num_classes=10,
        patch_size=4,
        embed_dim=128,
        depth=4,
        num_heads=4,
        mlp_dim=256,
        pool="mean",
        class_token=False,
    ),
)
# The recipes' tokenizers as models of their own, named for what they are: ResNet stages under the
# transformer (the ViT paper's hybrid) and CCT's convolutional tokenizer, both with sequence pooling.
MICRO = dict(image_size=32, num_classes=10, embed_dim=128, depth=4, num_heads=4, mlp_dim=256, class_token=False)
register_model("vit_hybrid_micro_32", "vit", _vit(**MICRO, stem="resnet", stem_width=16, conv_layers=3, pool="seq"))
register_model("cct_micro_32", "vit", _vit(**MICRO, stem="conv", pool="seq"))
register_model(
    "vit_tiny_patch4_32",
    "vit",
    _vit(
        image_size=32,
        num_classes=10,
        patch_size=4,
        embed_dim=192,
        depth=9,
        num_heads=3,
        mlp_dim=384,
        drop_path_rate=0.1,
    ),
)
register_model(
    "vit_small_patch4_32",
    "vit",
    _vit(
        image_size=32,
        num_classes=10,
        patch_size=4,
        embed_dim=384,
        depth=7,
        num_heads=6,
        mlp_dim=768,
        drop_path_rate=0.1,
    ),
)
