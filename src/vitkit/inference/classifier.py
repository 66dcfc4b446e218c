"""A trained model with its preprocessing and class names, ready for images: `Classifier`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.preprocess import Preprocessing
from ..errors import VitkitError
from ..eval.trust import mirror_mean, penultimate
from ..models.naming import model_label
from ..runtime import Bf16Autocast, resolve_device
from .predict import PredictOptions, collect_images, is_one_image, predict_images
from .unknown import Rejection, checkpoint_temperature, divides_by_temperature


class Classifier:
    """A trained model with its preprocessing and class names, ready for images. `model` is a PyTorch
    module or an ONNX Runtime session wrapper; both take normalised float NCHW and return logits.
    `precision` is what the model runs in (fp32, bf16 under autocast, or int8 for a quantized ONNX
    export) and `precision_reason` why; `folder` the checkpoint folder it came from (None for a file)."""

    def __init__(
        self,
        model,
        meta: dict,
        device: str = "auto",
        precision: str = "fp32",
        name: str = "model",
        precision_reason: str = "",
        folder: Path | None = None,
    ):
        self.name = name  # what the checkpoint is called on screen: its run folder, file or hub id
        self.folder = folder
        is_torch = isinstance(model, torch.nn.Module)
        self.device = resolve_device(device) if is_torch else torch.device("cpu")
        self.model = model.to(self.device).eval() if is_torch else model
        self.precision = precision if is_torch else model.meta.get("precision", "fp32")
        self.precision_reason = precision_reason or f"{self.precision} as exported"
        # what predictions run through: the model itself, or under bf16 autocast
        self.runner = Bf16Autocast(self.model, self.device) if self.precision == "bf16" else self.model
        self.meta = meta
        config = getattr(model, "config", None)
        self.preprocessing = Preprocessing.from_dict(
            meta.get("preprocessing") or {}, config and config.image_size, config and config.in_chans
        )
        self.image_size, self.channels = self.preprocessing.image_size, self.preprocessing.channels
        self.class_names: list[str] = meta.get("class_names") or [str(i) for i in range(config.num_classes)]
        # multi-label: sigmoid scores, and a label is predicted when its score reaches its threshold
        self.multi_label = bool(meta.get("multi_label"))
        self.thresholds: list[float] | None = meta.get("thresholds") if self.multi_label else None
        if self.multi_label and (self.thresholds is None or len(self.thresholds) != len(self.class_names)):
            raise VitkitError(f"{name} is multi-label but has no threshold per label: re-export it from its run")
        # decoded uint8 batches -> the model's input (resize, scale, normalise): `input_transform.for_inference`
        self.input_transform = self.preprocessing.batch_augment()
        # the calibration temperature fitted on the validation split (1: none), and what the logits are divided
        # by here: 1 when the model divides them itself
        self.temperature = checkpoint_temperature(meta)
        self.logit_divisor = 1.0 if divides_by_temperature(model) else self.temperature
        # set by `reject_unknown`: scores below its threshold answer "unknown"
        self.rejection: Rejection | None = None

    def reject_unknown(self, method: str = "auto") -> "Classifier":
        """Answer "unknown" for images unlike the training data, by the method and threshold the
        checkpoint records (set on its validation split; `method` "auto": the one it recommends)."""
        rejection = Rejection.from_checkpoint(self.meta, self.folder, method, self.name)
        if rejection.needs_features and not self.backend == "torch":
            raise VitkitError(
                f"--unknown-method {rejection.method} reads the model's features, which {self.backend} does not "
                "give: use --backend torch, or --unknown-method energy or msp"
            )
        self.rejection = rejection
        return self

    @property
    def backend(self) -> str:
        return "torch" if isinstance(self.model, torch.nn.Module) else "onnxruntime"

    @property
    def summary(self) -> str:
        """The recipe or model it was trained as (when recorded), family, input size and classes."""
        trained = self.meta.get("train_config") or {}
        parts = [model_label(**trained) if trained.get("preset") else trained.get("model"), self.meta.get("family")]
        parts += [f"{self.image_size} px", f"{len(self.class_names)} classes"]
        return ", ".join(str(part) for part in parts if part)

    @property
    def runtime(self) -> dict:
        """Where and how it runs, as the serve banner, /health and predict's JSON report it."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }

    def predict(
        self,
        inputs,
        topk: int = PredictOptions.topk,
        batch_size: int = PredictOptions.batch_size,
        threshold: float | None = None,
    ) -> dict | list[dict]:
        """Top-k labels for images, decoded, resized and cropped exactly as `vitkit predict` does it; for a
        multi-label classifier every label whose score reaches its threshold, best first (`topk` unused):
        the thresholds tuned on its validation split, or `threshold` for every label.

        `inputs`: a file path, a folder (searched for images) or a glob; a PIL image; a numpy array of
        uint8 pixels (HxWx3 RGB or HxW grey); a uint8 torch tensor (CxHxW, or NxCxHxW for several); or a
        list mixing them. Results are the "results" `vitkit predict --format json` prints: {"path": ...,
        "predictions": [{"label", "score"}, ...]} best first, with "input": n (the result's position)
        instead of "path" for an image in memory, and "error" instead of "predictions" for one that
        cannot be decoded. One image gives one result; a list, folder, glob or NxCxHxW batch a list.
        `classifier(inputs)` is the same call.
        """
        images = collect_images(inputs, self.preprocessing)
        results = predict_images(self, images, topk, batch_size, progress=False, threshold=threshold)
        single = not isinstance(inputs, (list, tuple)) and is_one_image(inputs)
        return results[0] if single else results

    __call__ = predict

    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (multi-label: each label's sigmoid score) for uint8 NCHW images already
        decoded to the preprocessing's square (`Preprocessing.load_tensor` or `image_tensor`), any channel
        count. Photos of any other size go through `predict`, which resizes and crops them first: resizing
        them here would squash them."""
        return self.outputs_tensor(images)[:, : len(self.class_names)]

    @torch.inference_mode()
    def outputs_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """`predict_tensor`'s probabilities, with each image's unknown-input score as one more column when
        the classifier rejects unknown inputs (`reject_unknown`); `predict.classifier_predictions` reads it."""
        self._check_square(images)
        x = self.input_transform.for_inference(images.to(self.device))
        logits, features = self._outputs(x)
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        if self.rejection is not None:
            if self.rejection.mirror:
                logits, features = mirror_mean((logits, features), self._outputs(x.flip(-1)))
            scores = self.rejection.scores(logits.cpu(), None if features is None else features.cpu())
            probs = torch.cat([probs.cpu(), scores.unsqueeze(1).to(probs.dtype)], dim=1)
        return probs.cpu()

    def _outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Calibrated fp32 logits of prepared images, and the penultimate features when the rejection
        reads them (else None)."""
        if self.rejection is not None and self.rejection.needs_features:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                logits, features = penultimate(self.model, x)
            return logits / self.logit_divisor, features.float()
        return self.runner(x).float() / self.logit_divisor, None

    def _check_square(self, images: torch.Tensor) -> None:
        side = self.preprocessing.square_size
        if images.ndim != 4 or images.shape[-2:] not in ((side, side), (self.image_size, self.image_size)):
            raise VitkitError(
                f"predict_tensor takes NxCx{side}x{side} images as preprocessing decodes them, got "
                f"{tuple(images.shape)}; pass photos of any size to predict(), which resizes and crops them"
            )
