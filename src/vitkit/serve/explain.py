"""What /explain draws: the image as the model sees it and the overlay of its map, on a model of its own."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import torch
from PIL import Image


def own_model(classifier):
    """The classifier with a PyTorch model of its own (fp32), for /explain: rollout switches attention
    capture on the model's modules and Grad-CAM hooks them, which would change /predict's forward passes
    running on the same modules at the same time (and theirs its maps). A copy rather than one lock around
    both, so that /predict keeps answering while a map is drawn, at the cost of one more model's weights
    in memory."""
    from ..inference import Classifier

    return Classifier(copy.deepcopy(classifier.model), classifier.meta, str(classifier.device), name=classifier.name)


def png_data_url(image: np.ndarray, side: int = 256) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).resize((side, side), Image.Resampling.NEAREST).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explanation(explainer, image: torch.Tensor, target: int) -> dict:
    """The image as the model sees it (the centre crop at its input size) and the overlay of the map
    `explain_tensor` picks for the model, explaining class `target`, on those same pixels: PNG data URLs of
    one size, so that they line up."""
    from ..viz.explain import explain_tensor, overlay
    from ..viz.report import display_images

    _, maps = explain_tensor(explainer, image.unsqueeze(0), target=torch.tensor([target]))
    shown = display_images(image.unsqueeze(0), explainer.input_transform)[0]
    shown = (shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown).permute(1, 2, 0).numpy()
    heat = next(iter(maps.values()))[0].numpy()
    return {"input": png_data_url(shown), "overlay": png_data_url(overlay(shown, heat))}


# what the overlay shows, by the map `explain_tensor` picks for the model (viz.explain.choose_method)
MAP_CAPTIONS = {
    "rollout": "where it looked: attention rollout",
    "gradcam": "what raised its top class: Grad-CAM on the token grid",
    "saliency": "the pixels that move its top class most: gradient saliency",
}


def map_caption(explainer) -> str:
    from ..viz.explain import choose_method

    if not isinstance(explainer.model, torch.nn.Module):
        return "no map: explanations need the PyTorch model"
    return MAP_CAPTIONS[choose_method(explainer.model)]
