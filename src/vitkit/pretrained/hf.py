"""Hugging Face ViT checkpoints <-> vitkit's ViT.

The mapping is exact: transformers' ViTForImageClassification / ViTModel compute the same function as
vitkit's ViT with pool="cls", separate q/k/v fused into one projection here, and GELU (erf) in the MLP.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

from ..data.preprocess import Preprocessing
from ..errors import MissingFile, VitkitError
from ..fileio import atomic_path, read_json, write_json
from ..models.io import check_preprocessing
from ..models.vit import ViT, ViTConfig
from .checks import check_keys, load_state_dict_file
from .result import Pretrained

HF_PREFIX = "vit."
# One name table serves both directions (Hugging Face key -> vitkit key); q/k/v are fused apart.
EMBEDDING_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
LAYER_MODULES = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
QKV = ("query", "key", "value")


def is_hf_vit_folder(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    config = read_json(path / "config.json")
    return "model_type" in config


def vit_config_from_hf(hf: dict, num_classes: int | None = None) -> ViTConfig:
    """The vitkit config for a transformers ViTConfig dict; other architectures are refused."""
    model_type = hf.get("model_type")
    if model_type not in ("vit", "deit"):
        raise VitkitError(
            f"the checkpoint is a {model_type or 'unknown'} model, not a ViT: vitkit fine-tunes ViT "
            "checkpoints (model_type 'vit') from Hugging Face"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise VitkitError(f"hidden_act={hf['hidden_act']!r} is not supported (only 'gelu')")
    labels = hf.get("id2label") or {}
    return ViTConfig(
        num_classes=num_classes or max(len(labels), 1),
        image_size=hf.get("image_size", 224),
        in_chans=hf.get("num_channels", 3),
        patch_size=hf.get("patch_size", 16),
        embed_dim=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        qkv_bias=hf.get("qkv_bias", True),
        class_token=True,
        pool="cls",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
    )


def hf_to_vitkit(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Rename (and fuse q/k/v of) a ViTModel or ViTForImageClassification state dict. Unknown or
    missing keys raise an error that lists them."""
    if any(k.startswith(HF_PREFIX) for k in state):
        body = {k[len(HF_PREFIX) :]: v for k, v in state.items() if k.startswith(HF_PREFIX)}
        head = {k: v for k, v in state.items() if not k.startswith(HF_PREFIX)}
    else:
        body, head = dict(state), {}
    body = {k: v for k, v in body.items() if not k.startswith("pooler.")}  # ViTModel's tanh pooler: unused
    expected = set(EMBEDDING_KEYS)
    for i in range(cfg.depth):
        layer = f"encoder.layer.{i}."
        expected |= {f"{layer}{m}.{p}" for m in LAYER_MODULES for p in ("weight", "bias")}
        expected |= {f"{layer}attention.attention.{n}.weight" for n in QKV}
        if cfg.qkv_bias:
            expected |= {f"{layer}attention.attention.{n}.bias" for n in QKV}
    check_keys(set(body), expected, "Hugging Face ViT")
    head_keys = {k for k in head}
    check_keys(head_keys, {"classifier.weight", "classifier.bias"} if head_keys else set(), "Hugging Face ViT head")

    out = {ours: body[theirs] for theirs, ours in EMBEDDING_KEYS.items()}
    for i in range(cfg.depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        out[dst + "attn.qkv.weight"] = torch.cat([body[att + n + ".weight"] for n in QKV])
        if cfg.qkv_bias:
            out[dst + "attn.qkv.bias"] = torch.cat([body[att + n + ".bias"] for n in QKV])
        for theirs, ours in LAYER_MODULES.items():
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = body[f"{src}{theirs}.{p}"]
    if head:
        out["head.weight"], out["head.bias"] = head["classifier.weight"], head["classifier.bias"]
    return out


def hf_incompatibilities(cfg: ViTConfig) -> list[tuple[str, str]]:
    """(what this ViT has that transformers' ViTForImageClassification lacks, the training flag that avoids
    it) for each such option; empty when the model exports exactly."""
    found = []
    if cfg.stem != "patch":
        kinds = {"conv": "a convolutional tokenizer", "resnet": "ResNet stages", "spt": "shifted patch tokenization"}
        kind = kinds[cfg.stem]
        found.append(
            (f"stem={cfg.stem!r} ({kind}; transformers embeds patches with one strided convolution)", "stem=patch")
        )
    if not cfg.class_token:
        found.append(("class_token=False (transformers' ViT always has a class token)", "class_token=true"))
    if cfg.pool != "cls":
        found.append((f"pool={cfg.pool!r} (transformers classifies from the class token alone)", "pool=cls"))
    if cfg.lsa:
        found.append(("lsa=True (locality self-attention)", "lsa=false"))
    if cfg.head_hidden:
        found.append(
            (f"head_hidden={list(cfg.head_hidden)} (transformers' head is one linear layer)", "head_hidden=[]")
        )
    if cfg.mlp_final_activation:
        found.append(("mlp_final_activation=True (a GELU after each MLP)", "mlp_final_activation=false"))
    if cfg.num_heads * (cfg.head_dim or cfg.embed_dim // cfg.num_heads) != cfg.embed_dim:
        found.append(
            (f"head_dim={cfg.head_dim} (transformers needs num_heads x head_dim == embed_dim)", "head_dim=null")
        )
    return found


def hf_export_error(cfg: ViTConfig) -> VitkitError:
    found = hf_incompatibilities(cfg)
    return VitkitError(
        f"--format hf: transformers' ViTForImageClassification cannot hold this model's "
        f"{'; '.join(what for what, _ in found)}. Export it as ONNX instead (vitkit export RUN model.onnx), or "
        f"train a ViT that transformers can load by adding {' '.join(f'--model-arg {fix}' for _, fix in found)}"
    )


def vitkit_to_hf(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """The inverse of hf_to_vitkit, for ViTForImageClassification."""
    if hf_incompatibilities(cfg):
        raise hf_export_error(cfg)
    out = {HF_PREFIX + theirs: state[ours] for theirs, ours in EMBEDDING_KEYS.items()}
    out["classifier.weight"], out["classifier.bias"] = state["head.weight"], state["head.bias"]
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}.", f"{HF_PREFIX}encoder.layer.{i}."
        for part, name in zip(state[src + "attn.qkv.weight"].chunk(3), QKV):
            out[dst + f"attention.attention.{name}.weight"] = part
        if cfg.qkv_bias:
            for part, name in zip(state[src + "attn.qkv.bias"].chunk(3), QKV):
                out[dst + f"attention.attention.{name}.bias"] = part
        for theirs, ours in LAYER_MODULES.items():
            for p in ("weight", "bias"):
                out[f"{dst}{theirs}.{p}"] = state[f"{src}{ours}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config_from_vitkit(cfg: ViTConfig, class_names: list[str]) -> dict:
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim or 4 * cfg.embed_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias,
        "encoder_stride": cfg.patch_size,
        "id2label": {str(i): n for i, n in enumerate(class_names)},
        "label2id": {n: i for i, n in enumerate(class_names)},
    }


MULTI_LABEL_PROBLEM = "multi_label_classification"  # transformers' problem_type of sigmoid classifiers

# Pillow filter numbers as transformers stores them in preprocessor_config.json
RESAMPLE_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _side(size, default: int) -> int:
    if isinstance(size, dict):
        return int(size.get("shortest_edge") or size.get("height") or default)
    return int(size or default)


def preprocessing_from_hf(folder: Path, cfg: ViTConfig, source: str | None = None) -> Preprocessing:
    """The checkpoint's own preprocessing from preprocessor_config.json: a `size` of height/width
    stretches (ViTImageProcessor; DeiTImageProcessor then centre-crops `crop_size`), a shortest_edge size
    resizes the shorter side (CLIP/BiT-style processors), with their filter and statistics. Without the
    file, ViTImageProcessor's defaults (stretch, bilinear, mean = std = 0.5), said on stderr naming
    `source` (default: the folder)."""
    path = folder / "preprocessor_config.json"
    proc = read_json(path) if path.is_file() else {}
    if not path.is_file():
        print(
            f"note: {source or folder} has no preprocessor_config.json: assuming ViTImageProcessor's defaults "
            f"(stretched to {cfg.image_size} px, bilinear, mean = std = 0.5)",
            file=sys.stderr,
        )
    size = proc.get("size", cfg.image_size)
    mode = "crop" if isinstance(size, dict) and "shortest_edge" in size else "stretch"
    resized = _side(size, cfg.image_size)
    crop = proc.get("crop_size") if proc.get("do_center_crop", False) else None
    image_size = _side(crop, resized) if crop else resized
    crop_pct = float(proc.get("crop_pct") or image_size / resized)
    if math.floor(image_size / crop_pct + 1e-6) != resized:  # a crop_pct that does not match the sizes
        crop_pct = image_size / resized
    codes = {code: name for name, code in RESAMPLE_CODES.items()}
    normalize = proc.get("do_normalize", True)
    mean = proc.get("image_mean", [0.5] * cfg.in_chans) if normalize else [0.0] * cfg.in_chans
    std = proc.get("image_std", [0.5] * cfg.in_chans) if normalize else [1.0] * cfg.in_chans
    mean, std = ([v] if isinstance(v, (int, float)) else v for v in (mean, std))  # one number serves every channel
    check_preprocessing(
        {"mean": mean, "std": std, "channels": cfg.in_chans},
        lambda problem: VitkitError(f"{path}: {problem}; download the checkpoint again or fix image_mean/image_std"),
    )
    return Preprocessing(
        image_size=image_size,
        mode=mode,
        crop_pct=crop_pct,
        resample=codes.get(proc.get("resample", 2), "bilinear"),
        mean=mean,
        std=std,
        channels=cfg.in_chans,
    )


def image_processor_config(pre: Preprocessing) -> dict:
    """A preprocessor_config.json that makes transformers compute the pixels vitkit does: shortest-edge
    resize + centre crop (CLIPImageProcessor) for crop, a square resize (ViTImageProcessor, or
    DeiTImageProcessor when crop_pct < 1) for stretch. Same Pillow filter, rescale 1/255, mean/std."""
    size = {"height": pre.image_size, "width": pre.image_size}
    common = {
        "do_resize": True,
        "resample": RESAMPLE_CODES[pre.resample],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "crop_pct": pre.crop_pct,
    }
    if pre.mode == "crop":
        return {
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": pre.resize_size},
            "do_center_crop": True,
            "crop_size": size,
            "do_convert_rgb": True,
            **common,
        }
    if pre.crop_pct < 1:
        return {
            "image_processor_type": "DeiTImageProcessor",
            "size": {"height": pre.resize_size, "width": pre.resize_size},
            "do_center_crop": True,
            "crop_size": size,
            **common,
        }
    return {"image_processor_type": "ViTImageProcessor", "size": size, **common}


def load_hf_folder(folder: Path, source: str | None = None) -> Pretrained:
    """The model, its preprocessing and (with a classifier) class names from a save_pretrained folder;
    `source` is what notes call it (a hub id; default: the folder)."""
    hf = read_json(folder / "config.json")
    cfg = vit_config_from_hf(hf)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise MissingFile(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")
    state = load_state_dict_file(weights)
    has_head = "classifier.weight" in state
    if has_head:
        cfg.num_classes = state["classifier.weight"].shape[0]
    mapped = hf_to_vitkit(state, cfg)
    model = ViT(cfg)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or (set(missing) - {"head.weight", "head.bias"}):
        raise VitkitError(f"weights do not fit the architecture: missing {missing}, unexpected {unexpected}")
    labels = hf.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(len(labels))] if has_head and labels else None
    return Pretrained(model, preprocessing_from_hf(folder, cfg, source), names, has_head)


def save_hf_folder(
    model: ViT,
    class_names: list[str],
    preprocessing: Preprocessing,
    out: str | os.PathLike,
    thresholds: list[float] | None = None,
    temperature: float = 1.0,
) -> Path:
    """A folder that transformers' from_pretrained and pipeline() load, preprocessing included. A model
    with a device resize (decode_size set) gets a processor that resizes in one step instead. With
    `thresholds` (a multi-label model) the config says problem_type multi_label_classification, so that
    transformers scores with a sigmoid, and keeps the thresholds (in id order) for vitkit. A calibration
    `temperature` is folded into the classifier's weights and bias (logits / T), so that pipeline() gives
    the calibrated scores vitkit gives."""
    from safetensors.torch import save_file

    if model.family != "vit":
        raise VitkitError(
            f"--format hf exports ViTs only and this checkpoint is a {model.family} model, which transformers "
            "has no class for; export it as ONNX instead (vitkit export RUN model.onnx)"
        )
    out = Path(out)
    cfg = model.config
    state = vitkit_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    for name in ("classifier.weight", "classifier.bias"):
        state[name] = state[name] / temperature
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    config = hf_config_from_vitkit(cfg, class_names)
    if thresholds is not None:
        config.update(problem_type=MULTI_LABEL_PROBLEM, thresholds=list(thresholds))
    write_json(out / "config.json", config)
    write_json(out / "preprocessor_config.json", image_processor_config(preprocessing))
    return out
