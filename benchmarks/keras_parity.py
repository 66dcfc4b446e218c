"""The MLP-Mixer, FNet and gMLP seed presets against the seeds' own Keras models, number for number.

The Keras side is the runnable peer in ../shared/peers/ (Keras 3 on JAX, in its own virtual environment),
run unchanged: its model is taken at the moment it would start training, every trainable weight is set to
random values (so that no weight hides at its initial 0 or 1), and its logits are computed on real CIFAR
images. The same weights are ported into the vitkit preset (Dense kernels transposed, the patch
projection laid out in the order Keras cuts patches), which runs on the same images normalised as the
peer's Normalization layer does. The table gives the largest absolute logit difference per family.

    python benchmarks/keras_parity.py --keras-python PATH/TO/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, SHARED_DATA, machine, print_table, write_json

from vitkit.models import create_model

PEER = REPO.parent / "shared" / "peers" / "keras_seed_reference.py"
PRESETS = {"mixer": "keras-mixer-cifar100", "fnet": "keras-fnet-cifar100", "gmlp": "keras-gmlp-cifar100"}
IMAGE_SIZE = 64  # the peer's input size for these families: its Resizing layer is then the identity

# Runs in the Keras environment: the peer script as it is, stopped at model.fit, its model's weights
# randomised and its logits on the images written out with every weight, by block.
KERAS_SIDE = r"""
import json, runpy, sys
import numpy as np
import keras

peer, data, out, seed, *families = sys.argv[1:]
captured = {}


class Captured(Exception):
    pass


def capture(model, *args, **kwargs):
    captured["model"] = model
    raise Captured


keras.Model.fit = capture
# The peer adds its position embedding to a constant arange: Keras then calls the Embedding layer once,
# at construction, and the model holds its output as a constant (never trained). Record the layer to
# read that constant's values.
embeddings = []
embedding_init = keras.layers.Embedding.__init__


def record_embedding(self, *args, **kwargs):
    embedding_init(self, *args, **kwargs)
    embeddings.append(self)


keras.layers.Embedding.__init__ = record_embedding


def dense(layer):
    return {"kernel": np.asarray(layer.kernel), "bias": np.asarray(layer.bias)}


def norm(layer):
    return {"gamma": np.asarray(layer.gamma), "beta": np.asarray(layer.beta)}


def block_weights(family, block):
    if family == "mixer":
        return {"norm": norm(block.norm), "token1": dense(block.mlp1.layers[0]), "token2": dense(block.mlp1.layers[1]),
                "channel1": dense(block.mlp2.layers[0]), "channel2": dense(block.mlp2.layers[1])}
    if family == "fnet":
        return {"n1": norm(block.n1), "n2": norm(block.n2), "ffn1": dense(block.ffn.layers[0]),
                "ffn2": dense(block.ffn.layers[2])}
    return {"n1": norm(block.n1), "n2": norm(block.n2), "p1": dense(block.p1.layers[0]), "p2": dense(block.p2),
            "sp": dense(block.sp)}


def export(family):
    embeddings.clear()
    sys.argv = [peer, data, "--model", family]
    try:
        runpy.run_path(peer, run_name="__main__")
    except Captured:
        pass
    model = captured["model"]
    rng = np.random.default_rng(int(seed))
    for variable in model.trainable_weights:
        shape = tuple(variable.shape)
        if variable.name == "gamma":
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        variable.assign(value.astype("float32"))
    x = np.load(data)["x_test"].astype("float32")
    logits = np.asarray(model(x, training=False))
    normalization = next(layer for layer in model.layers if isinstance(layer, keras.Sequential)).layers[0]
    top = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    blocks = [layer for layer in model.layers if type(layer).__name__ in ("MixerLayer", "FNetLayer", "GMLPLayer")]
    assert len(embeddings) == (family == "fnet") and not any(e in model.layers for e in embeddings)
    # the order in which extract_patches lays out one patch's values: (row, column, channel) per position
    size = 8
    probe = np.arange(size * size * 3, dtype="float32").reshape(1, size, size, 3)
    order = np.asarray(keras.ops.image.extract_patches(probe, size=size)).reshape(-1).astype(int)
    flat = {"logits": logits, "patch_order": np.stack([order // 3 // size, order // 3 % size, order % 3], 1),
            "norm_mean": np.asarray(normalization.mean).reshape(-1),
            "norm_var": np.asarray(normalization.variance).reshape(-1),
            "patch.kernel": np.asarray(top[0].kernel), "patch.bias": np.asarray(top[0].bias),
            "head.kernel": np.asarray(top[-1].kernel), "head.bias": np.asarray(top[-1].bias)}
    if embeddings:
        flat["pos"] = np.asarray(embeddings[0].embeddings)
    for i, block in enumerate(blocks):
        for name, weights in block_weights(family, block).items():
            for kind, value in weights.items():
                flat[f"blocks.{i}.{name}.{kind}"] = value
    np.savez(f"{out}/{family}.npz", **flat)
    return model.count_params()


import jax

print(json.dumps({"params": {family: export(family) for family in families},
                  "versions": {"keras": keras.__version__, "jax": jax.__version__}}))
"""


def linear(kernel: np.ndarray, bias: np.ndarray) -> dict[str, torch.Tensor]:
    return {"weight": torch.from_numpy(kernel.T.copy()), "bias": torch.from_numpy(bias.copy())}


def layer_norm(weights: dict, name: str) -> dict[str, torch.Tensor]:
    return {"weight": torch.from_numpy(weights[f"{name}.gamma"]), "bias": torch.from_numpy(weights[f"{name}.beta"])}


def block_state(family: str, w: dict) -> dict[str, dict[str, torch.Tensor]]:
    """vitkit's block modules and the Keras weights each takes (`w`: one block's arrays by name)."""

    def d(name):
        return linear(w[f"{name}.kernel"], w[f"{name}.bias"])

    if family == "mixer":  # one LayerNorm shared by both MLPs (share_norm)
        return {
            "norm1": layer_norm(w, "norm"),
            "token_mlp.fc1": d("token1"),
            "token_mlp.fc2": d("token2"),
            "channel_mlp.fc1": d("channel1"),
            "channel_mlp.fc2": d("channel2"),
        }
    if family == "fnet":
        return {"norm1": layer_norm(w, "n1"), "norm2": layer_norm(w, "n2"), "ffn.fc1": d("ffn1"), "ffn.fc2": d("ffn2")}
    return {
        "norm": layer_norm(w, "n1"),
        "proj_in": d("p1"),
        "sgu.norm": layer_norm(w, "n2"),
        "sgu.spatial": d("sp"),
        "proj_out": d("p2"),
    }


def patch_weight(arrays: dict[str, np.ndarray], model: torch.nn.Module) -> torch.Tensor:
    """The Keras patch projection (a Dense on each patch's values, laid out as `patch_order` says) as the
    weight of vitkit's patch convolution (dim, channels, size, size)."""
    conv = torch.zeros_like(model.patch_embed.proj.weight)
    kernel = torch.from_numpy(arrays["patch.kernel"])  # (values of one patch, dim)
    for index, (row, column, channel) in enumerate(arrays["patch_order"]):
        conv[:, channel, row, column] = kernel[index]
    return conv


def port(family: str, arrays: dict[str, np.ndarray], **model_args) -> torch.nn.Module:
    """The vitkit preset (its model changed by `model_args`) holding the Keras model's weights."""
    model = create_model(PRESETS[family], **model_args).eval()
    state = {
        "patch_embed.proj.weight": patch_weight(arrays, model),
        "patch_embed.proj.bias": torch.from_numpy(arrays["patch.bias"]),
    }
    if "pos" in arrays:
        state["pos_embed"] = torch.from_numpy(arrays["pos"])[None]
    state.update({f"head.{k}": v for k, v in linear(arrays["head.kernel"], arrays["head.bias"]).items()})
    for i in range(model.config.depth):
        prefix = f"blocks.{i}."
        weights = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        for module, tensors in block_state(family, weights).items():
            state.update({f"{prefix}{module}.{k}": v for k, v in tensors.items()})
    model.load_state_dict(state, strict=True)  # every tensor ported, none left at its initial value
    return model


def cifar_images(count: int, seed: int) -> np.ndarray:
    """Real CIFAR-100 test images, upsampled to the peer's 64 px input with Pillow (bicubic)."""
    import datasets
    from PIL import Image

    shard = SHARED_DATA / "cifar100-dev" / "data" / "test-00000-of-00001.parquet"
    rows = datasets.Dataset.from_parquet(str(shard)).shuffle(seed=seed).select(range(count))
    return np.stack([np.asarray(r["img"].convert("RGB").resize((IMAGE_SIZE,) * 2, Image.BICUBIC)) for r in rows])


def keras_outputs(
    families: list[str], keras_python: str, images: np.ndarray, seed: int, workdir: Path
) -> tuple[dict, dict]:
    """(Keras and JAX versions, {family: (Keras parameter count, the arrays the Keras side wrote)}): the peer
    run once per family in one Keras process."""
    data = workdir / "images.npz"
    labels = np.arange(len(images)) % 100
    labels[-1] = 99  # the peer sizes its head by the largest label: 100 classes, as the presets
    np.savez(data, x_train=images, y_train=labels, x_test=images, y_test=labels)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [keras_python, "-c", KERAS_SIDE, str(PEER), str(data), str(workdir), str(seed), *families],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the Keras side failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    outputs = {family: (report["params"][family], dict(np.load(workdir / f"{family}.npz"))) for family in families}
    return report["versions"], outputs


def vitkit_logits(model: torch.nn.Module, images: np.ndarray, arrays: dict) -> np.ndarray:
    """The images normalised as the peer's Normalization layer does, through `model`."""
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2)
    mean = torch.from_numpy(arrays["norm_mean"]).view(1, -1, 1, 1)
    std = torch.from_numpy(arrays["norm_var"]).sqrt().clamp_min(1e-7).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).double().numpy()


def compare(family: str, keras_params: int, arrays: dict, images: np.ndarray) -> dict:
    model = port(family, arrays)
    theirs = arrays["logits"].astype(np.float64)
    mine = vitkit_logits(model, images, arrays)
    row = {
        "family": family,
        "preset": PRESETS[family],
        "parameters_keras": keras_params,
        "parameters_vitkit": sum(p.numel() for p in model.parameters()),
        "images": len(images),
        "max_abs_logit_diff": float(np.abs(mine - theirs).max()),
        "logit_scale": float(np.abs(theirs).max()),
        "same_top1": float((mine.argmax(1) == theirs.argmax(1)).mean()),
    }
    if family == "gmlp":  # the preset keeps the Keras block's shortcut; the paper's differs from it
        paper = vitkit_logits(port(family, arrays, shortcut="input"), images, arrays)
        row["max_abs_logit_diff_paper_shortcut"] = float(np.abs(paper - theirs).max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", required=True, help="python of a venv with keras and jax")
    parser.add_argument("--families", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "keras_parity.json"))
    args = parser.parse_args()
    images = cifar_images(args.images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        versions, outputs = keras_outputs(args.families, args.keras_python, images, args.seed, Path(tmp))
    rows = [compare(family, *outputs[family], images) for family in args.families]
    print_table(
        rows,
        [
            ("family", "family", ""),
            ("preset", "preset", ""),
            ("parameters_keras", "params keras", ","),
            ("parameters_vitkit", "params vitkit", ","),
            ("max_abs_logit_diff", "max |logit diff|", ".2e"),
            ("max_abs_logit_diff_paper_shortcut", "gMLP with the paper's shortcut", ".2e"),
            ("logit_scale", "max |logit|", ".2f"),
            ("same_top1", "same top-1", ".2f"),
        ],
    )
    if args.out:
        command = (
            f"python benchmarks/keras_parity.py --images {args.images} --seed {args.seed} --keras-python KERAS_PYTHON"
        )
        record = {"machine": machine(), "keras_side": versions, "command": command, "rows": rows}
        write_json(args.out, record)


if __name__ == "__main__":
    main()
