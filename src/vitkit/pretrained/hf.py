"""Hugging Face ViT checkpoints <-> vitkit's ViT.

The mapping is exact: transformers' ViTForImageClassification / ViTModel compute the same function as
vitkit's ViT with pool="cls", separate q/k/v fused into one projection here, and GELU (erf) in the MLP.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..fileio import atomic_path, read_json, write_json
from ..models.vit import ViT, ViTConfig
from .checks import check_keys, load_state_dict_file

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
        raise ValueError(
            f"the checkpoint is a {model_type or 'unknown'} model, not a ViT: vitkit fine-tunes ViT "
            "checkpoints (model_type 'vit') from Hugging Face"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported (only 'gelu')")
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


def vitkit_to_hf(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """The inverse of hf_to_vitkit, for ViTForImageClassification."""
    if (
        cfg.pool != "cls"
        or not cfg.class_token
        or cfg.head_hidden
        or cfg.mlp_final_activation
        or cfg.stem != "patch"
        or cfg.lsa
    ):
        raise ValueError(
            "only plain class-token ViTs with a linear head (pool='cls', stem='patch', no LSA) have a "
            "Hugging Face equivalent; export this model as ONNX instead"
        )
    inner = cfg.num_heads * (cfg.head_dim or cfg.embed_dim // cfg.num_heads)
    if inner != cfg.embed_dim:
        raise ValueError("Hugging Face ViT needs num_heads x head_dim == embed_dim")
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


def preprocessing_from_hf(folder: Path, cfg: ViTConfig) -> dict:
    """image size, mean, std and resampling from preprocessor_config.json (ViTImageProcessor)."""
    pre = {
        "image_size": cfg.image_size,
        "channels": cfg.in_chans,
        "mean": [0.5] * cfg.in_chans,
        "std": [0.5] * cfg.in_chans,
        "resample": "bilinear",
    }
    path = folder / "preprocessor_config.json"
    if path.is_file():
        proc = read_json(path)
        size = proc.get("size", cfg.image_size)
        size = size.get("height", size.get("shortest_edge", cfg.image_size)) if isinstance(size, dict) else size
        pre.update(
            image_size=int(size),
            mean=list(proc.get("image_mean", pre["mean"])),
            std=list(proc.get("image_std", pre["std"])),
            resample={2: "bilinear", 3: "bicubic"}.get(proc.get("resample", 2), "bilinear"),
        )
    return pre


def load_hf_folder(folder: Path) -> tuple[ViT, dict, list[str] | None]:
    """(model, preprocessing, class names or None) from a save_pretrained folder."""
    hf = read_json(folder / "config.json")
    cfg = vit_config_from_hf(hf)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")
    state = load_state_dict_file(weights)
    has_head = "classifier.weight" in state
    if has_head:
        cfg.num_classes = state["classifier.weight"].shape[0]
    mapped = hf_to_vitkit(state, cfg)
    model = ViT(cfg)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or (set(missing) - {"head.weight", "head.bias"}):
        raise ValueError(f"weights do not fit the architecture: missing {missing}, unexpected {unexpected}")
    labels = hf.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(len(labels))] if has_head and labels else None
    model.has_pretrained_head = has_head
    return model, preprocessing_from_hf(folder, cfg), names


def save_hf_folder(model: ViT, class_names: list[str], preprocessing: dict, out: str | os.PathLike) -> Path:
    """A folder that transformers' from_pretrained and pipeline() load."""
    from safetensors.torch import save_file

    if model.family != "vit":
        raise ValueError(f"--format hf exports ViTs only; this checkpoint is a {model.family} model")
    out = Path(out)
    cfg = model.config
    state = vitkit_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", hf_config_from_vitkit(cfg, class_names))
    write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": cfg.image_size, "width": cfg.image_size},
            "resample": 3 if preprocessing.get("resample", "").startswith("bicubic") else 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(preprocessing["mean"]),
            "image_std": list(preprocessing["std"]),
        },
    )
    return out
