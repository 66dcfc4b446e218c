"""Building blocks shared by the model families: patch embedding, attention, MLPs, stochastic depth."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import VitkitError


def check_patch_grid(image_size: int, patch_size: int) -> int:
    """Number of patches per side; a ValueError names the argument to change when it does not divide."""
    if image_size <= 0 or patch_size <= 0:
        raise VitkitError(f"image_size ({image_size}) and patch_size ({patch_size}) must be positive")
    if image_size % patch_size:
        raise VitkitError(
            f"image_size={image_size} is not divisible by patch_size={patch_size}: "
            f"change image_size to a multiple of {patch_size} or pick another patch_size"
        )
    return image_size // patch_size


class Tokenizer(nn.Module):
    """Base of the image -> token sequence stems: one token per `stride` x `stride` cell."""

    cuts_patches = False  # True where each token is one patch of the image (drawn as patches.png)

    def __init__(self, image_size: int, stride: int, in_chans: int):
        super().__init__()
        self.stride = stride
        self.grid_size = self.grid_for(image_size)
        self.num_patches = self.grid_size**2
        self.in_chans = in_chans

    def describe(self) -> str:
        """What turns the image into tokens, in words (run records, summaries)."""
        return f"{self.stride}x{self.stride} patches"

    def grid_for(self, image_size: int) -> int:
        """Tokens per side at `image_size`; a ValueError names what to change when it does not fit."""
        return check_patch_grid(image_size, self.stride)


class PatchEmbed(Tokenizer):
    """Cut an image into non-overlapping patches and project each to `dim`.

    One convolution with kernel = stride = patch size; this is the same linear map as the Keras
    example's extract-patches + Dense, and the layout that Hugging Face and timm checkpoints use.
    """

    cuts_patches = True

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__(image_size, patch_size, in_chans)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.in_chans)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class ConvTokenizer(Tokenizer):
    """CCT's convolutional tokenizer (Hassani et al., 2021): `layers` x [3x3 conv, ReLU, 3x3 max-pool
    stride 2]. Overlapping receptive fields give ViTs the locality they lack on small datasets."""

    def __init__(self, image_size: int, in_chans: int, dim: int, layers: int = 2, width: int = 64):
        super().__init__(image_size, 2**layers, in_chans)
        self.layers = layers
        chans = [in_chans] + [width] * (layers - 1) + [dim]
        self.convs = nn.Sequential(
            *[
                m
                for a, b in zip(chans[:-1], chans[1:])
                for m in (nn.Conv2d(a, b, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.in_chans)
        return self.convs(x).flatten(2).transpose(1, 2)

    def describe(self) -> str:
        return f"convolutional tokenizer ({self.layers} conv + max-pool layers)"


class ShiftedPatchTokenizer(Tokenizer):
    """Shifted patch tokenization (Lee et al., 2021, "ViT for small-size datasets"): the image and its
    four half-patch diagonal shifts are stacked on the channel axis, cut into patches, normalised and
    projected, so each token also sees its neighbours' borders."""

    cuts_patches = True

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__(image_size, patch_size, in_chans)
        self.shift = patch_size // 2
        patch_dim = 5 * in_chans * patch_size * patch_size
        self.unfold = nn.Unfold(kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def describe(self) -> str:
        return f"shifted {self.stride}x{self.stride} patches"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.in_chans)
        s = self.shift
        shifted = [
            F.pad(x, pad)[..., s - dy : s - dy + x.shape[-2], s - dx : s - dx + x.shape[-1]]
            for pad, (dy, dx) in zip([(s, s, s, s)] * 4, [(-s, -s), (-s, s), (s, -s), (s, s)])
        ]
        patches = self.unfold(torch.cat([x] + shifted, dim=1)).transpose(1, 2)
        return self.proj(self.norm(patches))


def check_channels(x: torch.Tensor, in_chans: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise VitkitError(
            f"expected NCHW images with {in_chans} channel(s), got shape {tuple(x.shape)}: "
            f"convert the images or build the model with in_chans={x.shape[1] if x.ndim == 4 else '?'}"
        )


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 at the first block to `max_rate` at the last
    (plain Python, so that models can be built on the meta device)."""
    return [max_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (Huang et al., 2016)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear [-> GELU] -> dropout.

    The two dropout rates are separate because the seeds place them differently (ViT: both; the
    Keras Mixer: after the second layer only; the Keras FNet: after the first only).
    `final_activation` reproduces the Keras ViT, whose MLP helper puts GELU after every Dense.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        out: int | None = None,
        hidden_dropout: float = 0.0,
        out_dropout: float = 0.0,
        final_activation: bool = False,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(hidden_dropout)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.act2 = nn.GELU() if final_activation else nn.Identity()
        self.drop2 = nn.Dropout(out_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.act2(self.fc2(self.drop1(self.act(self.fc1(x))))))


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection and PyTorch's SDPA kernel.

    The inner width is num_heads * head_dim and need not equal the model width: the Keras seed uses
    4 heads of 64 on a 64-wide model. Set `keep_attention = True` to store the attention
    probabilities of the last forward in `attention` (used by attention rollout; slower path).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        # Locality self-attention (Lee et al., 2021): a learned temperature and no attention to itself,
        # which sharpens the attention distribution on small datasets.
        self.log_scale = nn.Parameter(torch.tensor(self.head_dim**-0.5).log()) if locality else None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scale, mask = self.head_dim**-0.5, None
        if self.log_scale is not None:
            scale = self.log_scale.exp()
            mask = ~torch.eye(N, dtype=torch.bool, device=x.device)
        # Training on CPU takes the explicit matmul path: at the recipes' 16-64 tokens PyTorch's CPU
        # flash-attention backward takes a large share of a small ViT's step, more than the explicit path.
        # Other devices and inference use SDPA.
        if self.keep_attention or (x.device.type == "cpu" and torch.is_grad_enabled()):
            logits = q @ k.transpose(-2, -1) * scale
            attn = (logits if mask is None else logits.masked_fill(~mask, float("-inf"))).softmax(dim=-1)
            if self.keep_attention:
                self.attention = attn.detach()
            out = F.dropout(attn, self.attn_drop, self.training) @ v
        elif mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        else:  # a learned scale is a tensor: fold it into q, since SDPA's scale must be a float
            out = F.scaled_dot_product_attention(
                q * scale, k, v, attn_mask=mask, scale=1.0, dropout_p=self.attn_drop if self.training else 0.0
            )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, -1)))


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int) -> torch.Tensor:
    """Bicubic interpolation of a (1, prefix + g*g, D) position table to a new square grid; prefix
    (class token) entries are kept unchanged."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = int(math.isqrt(grid.shape[1]))
    if old_grid * old_grid != grid.shape[1]:
        raise VitkitError(f"position table of {grid.shape[1]} patch entries is not a square grid")
    if old_grid == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def init_linear_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) for Linear weights, zero biases, unit LayerNorm (the ViT/timm recipe)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and module.kernel_size == module.stride:
        # patch projection: initialise like the Linear it replaces (fan-in over the whole patch)
        nn.init.xavier_uniform_(module.weight.view(module.out_channels, -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@torch.no_grad()
def whiten_conv_(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set a first convolution's filters to the whitening transform of the images' patches (Jordan 2024,
    airbench): the eigenvectors of the patch covariance, each scaled by 1/sqrt(its eigenvalue), so that
    the layer's outputs start decorrelated and of unit variance. The top eigenvectors are taken in
    descending order of variance; where the layer has room for twice as many filters as taken, each
    comes with its negative (a following ReLU/GELU then keeps both signs); filters beyond those keep their
    initialisation. The bias is zeroed."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    if conv.groups != 1 or images.shape[1] != in_ch:
        raise VitkitError(f"whitening needs a dense convolution over the {images.shape[1]} image channels")
    patches = F.unfold(images.float(), (kh, kw)).transpose(1, 2).reshape(-1, in_ch * kh * kw)
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / max(1, patches.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())  # ascending
    dim = eigenvalues.shape[0]
    paired = out_ch % 2 == 0 and out_ch // 2 <= dim
    count = out_ch // 2 if paired else min(out_ch, dim)
    top = (eigenvectors[:, -count:] / (eigenvalues[-count:] + eps).sqrt()).flip(1).T.float()
    filters = torch.cat([top, -top]) if paired else top
    weight = conv.weight.clone()
    weight[: filters.shape[0]] = filters.reshape(-1, in_ch, kh, kw).to(weight)
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.zero_()
