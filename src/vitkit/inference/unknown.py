"""Applying what a checkpoint keeps about its scores: the calibration temperature its logits are divided
by, and the unknown-input rejection (`--reject-unknown`): the method and the threshold set on its
validation split (`vitkit.eval.trust`), which answer "unknown" for an image scoring below it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VitkitError
from ..eval.ood import FEATURE_METHODS, KNN_K, METHODS, ood_scores

UNKNOWN = "unknown"


def checkpoint_temperature(meta: dict) -> float:
    """The calibration temperature a checkpoint records (1: none)."""
    return float((meta.get("calibration") or {}).get("temperature", 1.0))


def divides_by_temperature(model) -> bool:
    """Whether the model's own logits are already calibrated: an ONNX export divides in its graph, and says
    so in its metadata (ONNX Runtime running a checkpoint folder runs such an export too)."""
    own = getattr(model, "meta", None)
    return isinstance(own, dict) and bool((own.get("calibration") or {}).get("in_graph"))


@dataclass
class Rejection:
    """How a classifier tells unknown inputs: `method`'s score below `threshold` (which kept `keep` of the
    validation images) answers "unknown"; `bank`: the normalised training features knn compares with;
    `mirror`: the score reads the mean of each image's outputs and its mirror's (`eval.trust.mirrors_for_scores`),
    as the threshold was set."""

    method: str
    threshold: float
    keep: float
    bank: torch.Tensor | None = None
    k: int = KNN_K
    mirror: bool = False

    @property
    def needs_features(self) -> bool:
        return self.method in FEATURE_METHODS

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Scores of already calibrated logits (and features, for knn)."""
        return ood_scores(self.method, logits, 1.0, features, self.bank, self.k)

    @classmethod
    def from_checkpoint(cls, meta: dict, folder: Path | None, method: str, name: str) -> "Rejection":
        """The rejection a checkpoint's metadata records (`method` "auto": the one it recommends); a
        checkpoint without one, or without the features knn needs, is refused in a line saying what to do."""
        ood = meta.get("ood")
        if meta.get("multi_label"):
            raise VitkitError(f"--reject-unknown: {name} is multi-label; rejection is for single-label classifiers")
        if not isinstance(ood, dict) or not ood.get("thresholds"):
            raise VitkitError(
                f"--reject-unknown: {name} has no rejection threshold; set one on its validation split with "
                f"`vitkit calibrate RUN` (runs trained before vitkit recorded it)"
            )
        chosen = ood.get("method") if method == "auto" else method
        if chosen not in METHODS or chosen not in ood["thresholds"]:
            recorded = ", ".join(ood["thresholds"])
            raise VitkitError(f"--unknown-method {method}: {name} records thresholds for {recorded}")
        bank = None
        if chosen in FEATURE_METHODS:
            bank = _read_bank(folder, ood.get("features"), name, chosen)
        threshold, keep = float(ood["thresholds"][chosen]), float(ood.get("keep", 0))
        return cls(chosen, threshold, keep, bank, int(ood.get("knn_k", KNN_K)), bool(ood.get("mirror")))


def _read_bank(folder: Path | None, file: str | None, name: str, method: str) -> torch.Tensor:
    from safetensors.torch import load_file

    path = folder / file if folder is not None and file else None
    if path is None or not path.is_file():
        raise VitkitError(
            f"--unknown-method {method}: {name} has no training features beside it ({file or 'none recorded'}); "
            "use --unknown-method energy or msp, or load the checkpoint folder it came from"
        )
    return load_file(str(path))["features"].float()


def unknown_answers(rejection: Rejection, scores: torch.Tensor) -> list[dict]:
    """Per image, what `--reject-unknown` adds to its result: whether it is unknown and its score."""
    return [
        {"unknown": bool(score < rejection.threshold), "unknown_score": round(float(score), 6)}
        for score in scores.tolist()
    ]
