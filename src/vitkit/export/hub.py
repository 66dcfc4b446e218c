"""Publishing a checkpoint: a Hugging Face folder with its model card (`vitkit export --format hf`) and a hub
repo (`vitkit push`) through huggingface_hub, which honours HF_ENDPOINT, HF_TOKEN and `hf auth login`.

A ViT that transformers' ViTForImageClassification can hold is published in transformers' layout, which
vitkit loads too; any other model as a vitkit checkpoint (config.json + model.safetensors), which vitkit
loads and the model card explains."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import VitkitError
from ..eval.trust import OOD_FEATURES
from ..fileio import read_json, write_json
from ..inference import checkpoint_folder, load
from ..models.io import CONFIG_NAME, WEIGHTS_NAME
from ..options import names_where
from ..pretrained import is_hub_id, network_errors
from ..pretrained.hf import hf_export_error, hf_incompatibilities, save_hf_folder
from ..training.config import TrainConfig
from .card import local_name, model_card

# Recorded training options that hold local paths; a published checkpoint keeps only their last part.
PATH_OPTIONS = names_where(TrainConfig, path=True)


def transformers_blockers(model) -> list[str]:
    """What keeps transformers from loading `model`; empty when it exports exactly."""
    if model.family != "vit":
        return [f"vitkit's {model.family} architecture"]
    return [what for what, _ in hf_incompatibilities(model.config)]


def write_hf_folder(classifier, checkpoint: Path, out: str | os.PathLike, title: str, load_as: str) -> Path:
    """transformers' layout (config, weights, image processor) and the model card; a model transformers
    cannot hold is refused with the options at fault."""
    if classifier.backend != "torch":
        raise VitkitError("--format hf needs a checkpoint folder (a run, best/ or last/), not an .onnx file")
    if classifier.model.family == "vit" and hf_incompatibilities(classifier.model.config):
        raise hf_export_error(classifier.model.config)
    out = save_hf_folder(
        classifier.model, classifier.class_names, classifier.preprocessing, out, classifier.thresholds,
        classifier.temperature,
    )
    if classifier.meta.get("ood"):  # thresholds of calibrated logits, which the folded weights give
        write_json(out / "config.json", {**read_json(out / "config.json"), "vitkit_ood": classifier.meta["ood"]})
        features = checkpoint_folder(checkpoint) / OOD_FEATURES
        if features.is_file():
            shutil.copyfile(features, out / OOD_FEATURES)
    card = model_card(classifier, checkpoint, title, load_as, transformers_ready=True)
    (out / "README.md").write_text(card)
    return out


def write_vitkit_folder(classifier, checkpoint: Path, out: Path, title: str, load_as: str) -> Path:
    """The checkpoint as vitkit saves it, training options' local paths reduced to their last part and the
    run folder's path left out, with the model card."""
    out.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_folder(checkpoint)
    shutil.copyfile(folder / WEIGHTS_NAME, out / WEIGHTS_NAME)
    if (folder / OOD_FEATURES).is_file():  # what --unknown-method knn compares with
        shutil.copyfile(folder / OOD_FEATURES, out / OOD_FEATURES)
    meta = dict(classifier.meta)
    trained = {k: v for k, v in (meta.get("train_config") or {}).items() if k != "out"}
    trained.update({k: local_name(trained[k]) for k in PATH_OPTIONS if isinstance(trained.get(k), str)})
    if meta.get("train_config") is not None:
        meta["train_config"] = trained
    write_json(out / CONFIG_NAME, meta)
    blockers = transformers_blockers(classifier.model)
    (out / "README.md").write_text(model_card(classifier, checkpoint, title, load_as, False, blockers))
    return out


def push(checkpoint: str | os.PathLike, repo_id: str, private: bool = False, message: str | None = None) -> dict:
    """Create the hub repo (when new) and upload the checkpoint with its model card in one commit."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise VitkitError("vitkit push needs huggingface_hub (pip install 'vitkit[hf]')") from None
    if not is_hub_id(repo_id):
        raise VitkitError(f"REPO_ID {repo_id!r}: use owner/name, e.g. your-name/flowers-vit")
    path = Path(checkpoint)
    if path.suffix == ".onnx" or not path.is_dir():
        raise VitkitError(f"{checkpoint}: vitkit push takes a run folder or a checkpoint folder (best/, last/)")
    classifier = load(path, device="cpu", backend="torch", precision="fp32")
    layout = "vitkit" if transformers_blockers(classifier.model) else "transformers"
    title = repo_id.split("/")[1]
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="vitkit-push-") as tmp:
        if layout == "transformers":
            write_hf_folder(classifier, path, tmp, title, repo_id)
        else:
            write_vitkit_folder(classifier, path, Path(tmp), title, repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                folder_path=tmp, repo_id=repo_id, commit_message=message or f"Upload {classifier.name} with vitkit"
            )
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status in (401, 403):
                raise VitkitError(
                    f"the hub at {api.endpoint} refused to write to {repo_id} ({status}): log in with "
                    "`hf auth login` or set HF_TOKEN to a token with write access to it"
                ) from None
            raise VitkitError(f"the hub at {api.endpoint} refused the upload: {str(e).splitlines()[0]}") from None
        except network_errors() as e:  # the message names the address, never the token
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VitkitError(
                f"cannot reach the hub at {api.endpoint} ({first}); check the network or HF_ENDPOINT"
            ) from None
    return {"repo": f"{api.endpoint}/{repo_id}", "layout": layout, "commit": commit.oid}
