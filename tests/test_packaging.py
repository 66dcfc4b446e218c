"""What an installed vitkit carries and what its inference path costs: the digits ship inside the
package with scikit-learn's exact values, the wheel includes them, and loading a model and predicting
(vitkit.inference) import neither matplotlib nor scikit-learn, nor any training code."""

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import torch
from conftest import ROOT, subprocess_env

from vitkit.data.builtin import load_digits_dataset
from vitkit.data.splits import stratified_split


def test_packaged_digits_are_scikit_learns_exactly():
    from sklearn.datasets import load_digits

    reference = load_digits()
    with np.load(ROOT / "src" / "vitkit" / "data" / "digits.npz") as packaged:
        assert packaged["images"].dtype == np.uint8
        assert np.array_equal(packaged["images"], reference.images)
        assert np.array_equal(packaged["labels"], reference.target)
    # the images training sees are the ones vitkit made from scikit-learn's copy before it shipped its own
    expected = torch.from_numpy((reference.images / 16 * 255).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(reference.target)
    train_idx, test_idx = stratified_split(labels, 0.2, seed=0)
    dataset = load_digits_dataset(seed=0)
    assert torch.equal(dataset.train.images, expected[train_idx])
    assert torch.equal(dataset.test.images, expected[test_idx])
    assert torch.equal(dataset.train.labels, labels[train_idx]) and dataset.train.labels.dtype == torch.int64


def test_the_wheel_ships_the_digits(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("vitkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vitkit/data/digits.npz" in names and "vitkit/serve/page.html" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and not any("scikit-learn" in line or "scipy" in line for line in requires)


def test_inference_imports_neither_matplotlib_nor_scikit_learn(digits_run):
    run, _ = digits_run
    code = (
        "import sys, numpy, torch, vitkit, vitkit.inference, vitkit.serve.app\n"
        "clf = vitkit.inference.load(sys.argv[1])\n"
        "clf.predict_tensor(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))\n"
        "clf.predict(numpy.zeros((8, 8), numpy.uint8))\n"
        "print(' '.join(m for m in ('matplotlib', 'sklearn', 'scipy') if m in sys.modules) or 'none')\n"
        "print(' '.join(m for m in sys.modules if m.startswith('vitkit.training')) or 'none')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run)], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy, training = proc.stdout.splitlines()
    assert heavy == "none"
    assert training == "none", "inference imported training code"
