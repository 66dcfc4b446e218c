"""Why did the model say that? The method follows how the model makes its tokens.

Attention rollout (Abnar & Zuidema, 2020): average the heads of each block, add the identity for the
residual path, renormalise, and multiply the blocks' matrices from first to last. The class token's
row (or, without a class token, the mean over all query tokens) says how much each token reached the
output. That maps onto the image only where a token is a patch of it: in a hybrid or a convolutional
tokenizer every token is a cell of a feature map whose receptive field covers much of the image, and
the stem has already mixed it, so rollout shows how the transformer mixed cells, not where the evidence
lies (it tends to light corners and background evenly). For those, Grad-CAM (Selvaraju et al., 2017)
on the token grid the convolutional stages produce weighs each cell by the class score's gradient: the
usual choice for CNN features. For models without tokens, |d logit / d pixel| (Simonyan et al., 2014).
"""

from __future__ import annotations

import dataclasses
import io
import os
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VitkitError
from ..options import option


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


def token_grad_cam(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B, g, g) Grad-CAM on the tokens the stem hands the transformer (the last convolutional stage's
    output): ReLU of the channels weighted by their mean gradient of the target logit, scaled to [0, 1]."""
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["tokens"] = output

    handle = model.patch_embed.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            target = logits.argmax(dim=1) if target is None else target
            logits.gather(1, target.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    tokens = kept["tokens"]  # (B, N, D)
    weights = tokens.grad.mean(dim=1, keepdim=True)  # (B, 1, D): each channel's importance
    cam = (weights * tokens).sum(dim=-1).relu().detach()  # (B, N)
    grid = model.patch_embed.grid_size
    return _unit(cam.reshape(-1, grid, grid))


METHODS = ("auto", "rollout", "gradcam", "saliency")
_explain = partial(option, group="explain", commands=("explain",))


@dataclasses.dataclass
class ExplainOptions:
    """The options of `vitkit explain`, declared once for it and for `explain_image`'s defaults."""

    out: str = _explain(dataclasses.MISSING, "PNG file for one image, else a folder (one IMAGE_NAME.png each)")
    method: str = _explain("auto", "heat map (auto: as above)", choices=METHODS)
    topk: int = _explain(5, "predictions listed beside the map", at_least=1)


def choose_method(model, method: str = "auto") -> str:
    """rollout where tokens are patches of the image; Grad-CAM on the token grid where a convolutional
    stem makes them (hybrids, CCT); gradient saliency for models without tokens."""
    tokens = getattr(model, "patch_embed", None) is not None
    if method == "auto":
        if tokens and model.patch_size is None:
            return "gradcam"
        return "rollout" if model.attention_layers else "saliency"
    if method == "rollout" and not model.attention_layers:
        raise VitkitError("--method rollout needs a model with attention (a ViT); use gradcam or saliency")
    if method == "gradcam" and not tokens:
        raise VitkitError("--method gradcam works on token models (ViT, hybrids, MLP families); use saliency")
    if method not in METHODS:
        raise VitkitError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    return method


BLANK_GRADCAM_NOTE = (
    "the Grad-CAM map is blank: no token's features raise the predicted class's score here (every cell's "
    "gradient-weighted sum is negative, which ReLU clears), so it locates nothing; try --method saliency"
)


def method_note(model, method: str, maps: dict[str, torch.Tensor] | None = None) -> str:
    """What the chosen map can and cannot show for this model, printed under the figure; with the `maps`
    drawn, also why one of them is blank."""
    if maps is not None and method == "gradcam" and float(maps["gradcam"].max()) == 0:
        return BLANK_GRADCAM_NOTE
    if method == "rollout" and model.patch_size is None:
        return (
            "attention rollout over tokens made by convolutional stages: each token already mixes much of the "
            "image, so this shows how attention mixed cells, not where the evidence is; try --method gradcam"
        )
    if method == "rollout":
        return f"attention rollout: how much each {model.patch_size}x{model.patch_size} patch reached the output"
    if method == "gradcam":
        grid = model.patch_embed.grid_size
        return (
            f"Grad-CAM on the {grid}x{grid} token grid the stem hands the transformer: cells whose features "
            "raise the predicted class (coarse: one cell per token)"
        )
    return "gradient saliency: pixels whose change moves the predicted class's score most"


def _unit(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1).values.view(-1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1)
    return (maps - lo) / (hi - lo).clamp(min=1e-12)


def explain_tensor(
    classifier, images: torch.Tensor, method: str = "auto", target: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probabilities and heat maps (each (B, H, W) at the model's input size) for uint8 images, by
    `method` (see `choose_method`). Grad-CAM and saliency explain class `target` (one per image; default:
    each image's top class here), e.g. the top class of a forward pass in another precision."""
    model = classifier.model
    if not isinstance(model, torch.nn.Module):
        raise VitkitError("explanations need the PyTorch model: load the checkpoint folder, not the .onnx file")
    x = classifier.input_transform.for_inference(images.to(classifier.device))
    model.eval()
    with torch.inference_mode():
        logits = model(x).float()
        probs = logits.sigmoid() if classifier.multi_label else logits.softmax(-1)
    method = choose_method(model, method)
    target = probs.argmax(-1) if target is None else target.to(x.device)
    if method == "rollout":
        maps = attention_maps(model, x)
    elif method == "gradcam":
        maps = {"gradcam": token_grad_cam(model, x, target)}
    else:
        maps = {"saliency": gradient_saliency(model, x, target)}
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
    "gradcam": "Grad-CAM (token grid)",
}


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image blended with a jet-coloured heat map in [0, 1]."""
    from matplotlib import colormaps

    coloured = colormaps["jet"](heat)[..., :3] * 255
    return (image * (1 - alpha) + coloured * alpha).clip(0, 255).astype(np.uint8)


def render_explanation(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    top: list[dict],
    path_or_buffer,
    original: np.ndarray | None = None,
    name: str = "",
    note: str = "",
    bars_title: str | None = None,
) -> None:
    """The photo as given (with its file name), the model's input, one overlay per map and the top-k bars
    (titled `bars_title`, default top-k), side by side; `note` says what the maps can show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ([(original, name or "photo")] if original is not None else []) + [
        (image, f"model input ({image.shape[0]} px)")
    ]
    panels = len(shown) + len(maps) + 1
    fig, axes = plt.subplots(
        1, panels, figsize=(3.6 * panels, 4.2), gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]}
    )
    for ax, (picture, title) in zip(axes, shown):
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
    for ax, (key, heat) in zip(axes[len(shown) :], maps.items()):
        ax.imshow(overlay(image, heat))
        ax.set_title(TITLES[key], fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    bars = axes[-1]
    labels, scores = [p["label"] for p in top][::-1], [p["score"] for p in top][::-1]
    bars.barh(range(len(top)), scores, color="tab:blue")
    bars.set_yticks(range(len(top)), labels)
    bars.set_xlim(0, 1)
    bars.set_title(bars_title or f"top-{len(top)}")
    for i, s in enumerate(scores):
        bars.text(min(s + 0.02, 0.8), i, f"{s:.3f}", va="center", fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(path_or_buffer, dpi=110, format="png")
    plt.close(fig)


def explain_image(
    classifier,
    source,
    out: str | os.PathLike | io.BytesIO,
    topk: int = ExplainOptions.topk,
    method: str = ExplainOptions.method,
) -> tuple[list[dict], str, str]:
    """Write the explanation figure for one image file; return its top-k predictions (multi-label: the
    labels above their thresholds), the method used and the note under the figure (see `method_note`)."""
    from pathlib import Path

    from PIL import Image

    from ..inference.predict import classifier_predictions
    from .report import display_images

    images = classifier.preprocessing.load_tensor(source).unsqueeze(0)
    method = choose_method(classifier.model, method)
    probs, maps = explain_tensor(classifier, images, method)
    shown = display_images(images, classifier.input_transform)[0]
    shown = shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown
    top = classifier_predictions(classifier, probs, topk)[0]
    note = method_note(classifier.model, method, maps)
    with Image.open(source) as photo:
        photo.thumbnail((512, 512))
        original = np.asarray(photo.convert("RGB"))
    render_explanation(
        shown.permute(1, 2, 0).numpy(),
        {k: v[0].numpy() for k, v in maps.items()},
        top,
        out,
        original=original,
        name=Path(str(source)).name,
        note=note,
        bars_title="labels above their thresholds" if classifier.multi_label else None,
    )
    return top, method, note
