"""Why did the model say that? Attention rollout for ViTs, gradient saliency for everything else.

Attention rollout (Abnar & Zuidema, 2020): average the heads of each block, add the identity for the
residual path, renormalise, and multiply the blocks' matrices from first to last. The class token's
row (or, without a class token, the mean over all query tokens) says how much each patch reached the
output. For models without attention, |d logit / d pixel| (Simonyan et al., 2014) takes its place.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def attention_maps(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'rollout': (B, g, g)} and, with a class token, {'cls_last': (B, g, g)}; each scaled to [0, 1]."""
    modules = model.attention_layers
    for m in modules:
        m.keep_attention = True
    try:
        model(x)
        attentions = [m.attention.mean(dim=1) for m in modules]  # (B, N, N) per block
    finally:
        for m in modules:
            m.keep_attention, m.attention = False, None
    n = attentions[0].shape[-1]
    eye = torch.eye(n, device=x.device)
    rollout = eye.expand_as(attentions[0])
    for attn in attentions:
        step = 0.5 * attn + 0.5 * eye
        rollout = (step / step.sum(dim=-1, keepdim=True)) @ rollout
    prefix, grid = model.num_prefix_tokens, model.patch_embed.grid_size
    received = rollout[:, 0, prefix:] if prefix else rollout.mean(dim=1)
    maps = {"rollout": received.reshape(-1, grid, grid)}
    if prefix:
        maps["cls_last"] = attentions[-1][:, 0, prefix:].reshape(-1, grid, grid)
    return {k: _unit(v) for k, v in maps.items()}


def gradient_saliency(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) max over channels of |d logit_target / d input|, scaled to [0, 1]."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        target = logits.argmax(dim=1) if target is None else target
        logits.gather(1, target.view(-1, 1)).sum().backward()
    return _unit(x.grad.abs().amax(dim=1))


def _unit(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1).values.view(-1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - lo) / (hi - lo).clamp(min=1e-12)


def explain_tensor(classifier, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probabilities and heat maps (each (B, H, W) at the model's input size) for uint8 images."""
    model = classifier.model
    if not isinstance(model, torch.nn.Module):
        raise ValueError("explanations need the PyTorch model: load the checkpoint folder, not the .onnx file")
    x = classifier.augment.eval(images.to(classifier.device))
    model.eval()
    with torch.inference_mode():
        logits = model(x).float()
        probs = logits.sigmoid() if getattr(classifier, "multi_label", False) else logits.softmax(-1)
    if model.attention_layers:
        maps = attention_maps(model, x)
    else:
        maps = {"saliency": gradient_saliency(model, x, probs.argmax(-1))}
    size = x.shape[-1]
    maps = {
        k: F.interpolate(v.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        for k, v in maps.items()
    }
    return probs.cpu(), {k: v.cpu() for k, v in maps.items()}


TITLES = {
    "rollout": "attention rollout",
    "cls_last": "class-token attention (last block)",
    "saliency": "gradient saliency",
}


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image blended with a jet-coloured heat map in [0, 1]."""
    from matplotlib import colormaps

    coloured = colormaps["jet"](heat)[..., :3] * 255
    return (image * (1 - alpha) + coloured * alpha).clip(0, 255).astype(np.uint8)


def render_explanation(
    image: np.ndarray, maps: dict[str, np.ndarray], top: list[dict], path_or_buffer, title: str | None = None
) -> None:
    """Image, one overlay per map and the top-5 bars (titled `title`, default top-k), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + len(maps)
    fig, axes = plt.subplots(
        1, panels, figsize=(3.6 * panels, 3.8), gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]}
    )
    axes[0].imshow(image)
    axes[0].set_title("input")
    for ax, (name, heat) in zip(axes[1:], maps.items()):
        ax.imshow(overlay(image, heat))
        ax.set_title(TITLES[name], fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    bars = axes[-1]
    labels, scores = [p["label"] for p in top][::-1], [p["score"] for p in top][::-1]
    bars.barh(range(len(top)), scores, color="tab:blue")
    bars.set_yticks(range(len(top)), labels)
    bars.set_xlim(0, 1)
    bars.set_title(title or f"top-{len(top)}")
    for i, s in enumerate(scores):
        bars.text(min(s + 0.02, 0.8), i, f"{s:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path_or_buffer, dpi=110, format="png")
    plt.close(fig)


def explain_image(classifier, source, out: str | os.PathLike | io.BytesIO, topk: int = 5) -> list[dict]:
    """Write the explanation figure for one image file; return its top-k predictions (multi-label: the
    labels above their thresholds)."""
    from ..predict import classifier_predictions
    from .report import display_images

    images = classifier.preprocessing.load_tensor(source).unsqueeze(0)
    probs, maps = explain_tensor(classifier, images)
    shown = display_images(images, classifier.augment)[0]
    shown = shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown
    top = classifier_predictions(classifier, probs, topk)[0]
    title = "labels above their thresholds" if getattr(classifier, "multi_label", False) else None
    render_explanation(shown.permute(1, 2, 0).numpy(), {k: v[0].numpy() for k, v in maps.items()}, top, out, title)
    return top
