"""The MLP-Mixer, FNet and gMLP seed presets compute what the seeds' own Keras models compute: the Keras
peer (keras_seed_reference.py beside the shared data, Keras 3 on JAX) run unchanged with random weights,
its weights ported into the vitkit preset, the same real CIFAR-100 images through both
(benchmarks/keras_parity.py does the work and records the numbers)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import keras_parity  # noqa: E402

# Keras and JAX come with the dev extra; VITKIT_KERAS_PYTHON points at another environment that has them.
KERAS_PYTHON = os.environ.get("VITKIT_KERAS_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def keras_side(tmp_path_factory):
    shared_dataset("cifar100-dev")  # the images
    if not keras_parity.PEER.is_file():
        pytest.skip(f"the Keras peer is not at {keras_parity.PEER}")
    probe = subprocess.run(
        [KERAS_PYTHON, "-c", "import keras, jax"], capture_output=True, env={**os.environ, "KERAS_BACKEND": "jax"}
    )
    if probe.returncode != 0:
        pytest.skip(f"{KERAS_PYTHON} cannot import keras and jax (pip install -e '.[dev]')")
    images = keras_parity.cifar_images(4, seed=0)
    families = list(keras_parity.PRESETS)
    _, outputs = keras_parity.keras_outputs(families, KERAS_PYTHON, images, 0, tmp_path_factory.mktemp("keras"))
    return images, outputs


@pytest.mark.slow  # a Keras process: JAX compiles each model
@pytest.mark.xdist_group("keras")  # one worker builds the Keras side for all three
@pytest.mark.parametrize("family", ["mixer", "fnet", "gmlp"])
def test_seed_presets_match_the_keras_models(keras_side, family):
    images, outputs = keras_side
    row = keras_parity.compare(family, *outputs[family], images)
    assert row["logit_scale"] > 0.5  # random weights give logits that differ from class to class
    assert row["max_abs_logit_diff"] < 1e-4, row
    assert row["parameters_vitkit"] == row["parameters_keras"] - 7 + (64 * 256 if family == "fnet" else 0), row
    if family == "gmlp":  # the Keras block's shortcut is the preset's own: the paper's would not match
        assert row["max_abs_logit_diff_paper_shortcut"] > 0.1, row
