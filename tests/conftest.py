import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

# pytest-xdist workers share the cores: one torch thread each (the CLI subprocesses inherit it through
# OMP_NUM_THREADS), instead of every worker oversubscribing every core, which makes a step 10-20x slower.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# In CI (CI=true) every skip fails the run unless its test is listed here with the reason the skip is
# acceptable there: CI installs every extra, Chromium, Fashion-MNIST and the shared data, so a skip means
# something is missing. Keys are test ids as pytest prints them, without [parameters].
ALLOWED_SKIPS_IN_CI: dict[str, str] = {}


def pytest_collection_modifyitems(items):
    """The end-to-end (slow) tests first: pytest-xdist hands tests out in this order, so the longest
    start at once and the short ones fill the gaps, instead of one long test starting last. Among the
    others, one test that needs the shared digits run comes first and the rest of them last, so one
    worker trains it while the others run tests that do not wait for it."""
    first_digits = next((item for item in items if "digits_run" in getattr(item, "fixturenames", ())), None)

    def order(item) -> tuple[bool, bool]:
        waits = item is not first_digits and "digits_run" in getattr(item, "fixturenames", ())
        return item.get_closest_marker("slow") is None, waits

    items.sort(key=order)


def pytest_runtest_setup(item):
    """Under `--dist loadgroup` a worker renames every test of an xdist_group to end in @group, and the
    scheduler keeps a group on one worker only through that name. Some pytest releases ignore the renaming
    (pytest-xdist issue 1386): the groups are then split silently and each worker builds their shared
    module fixtures again. Fail instead."""
    grouping = getattr(item.config.option, "loadgroup", False)  # set on loadgroup workers only
    if grouping and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            f"--dist loadgroup does not group tests with pytest {pytest.__version__} ({item.nodeid} has no @group "
            "suffix): install the pytest version pyproject.toml pins",
            pytrace=False,
        )


# the smallest model of each family, for tests that must cover them all
MODEL_FAMILIES = [
    "vit_micro_patch4_32",
    "mixer_micro_patch4_32",
    "fnet_micro_patch4_32",
    "gmlp_micro_patch4_32",
    "resnet18_cifar",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


_skips: list[tuple[str, str]] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def pytest_runtest_logreport(report):
    # an expected failure (xfail) is a skip too: it passes the run while the test checks nothing
    if report.skipped:
        reason = f"xfail: {report.wasxfail or 'no reason given'}" if hasattr(report, "wasxfail") else None
        _skips.append((report.nodeid, reason or _skip_reason(report)))


def pytest_collectreport(report):
    if report.skipped:  # a whole module skipped at import (importorskip at module level)
        _skips.append((report.nodeid, _skip_reason(report)))


def _unexpected_skips() -> list[tuple[str, str]]:
    return [(test, reason) for test, reason in _skips if test.split("[")[0] not in ALLOWED_SKIPS_IN_CI]


def pytest_sessionfinish(session, exitstatus):
    if in_ci() and exitstatus == pytest.ExitCode.OK and _unexpected_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    unexpected = _unexpected_skips()
    if in_ci() and unexpected:
        terminalreporter.section("skipped in CI (not in ALLOWED_SKIPS_IN_CI): the run fails", red=True)
        for test, reason in unexpected:
            terminalreporter.line(f"{test}: {reason}")
        terminalreporter.line("install what the test needs, or list it in tests/conftest.py with the reason")


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory) -> Path:
    """The ONNX exports of this session, shared by its tests and workers (see `isolated_cache`); exports
    are written atomically, so two workers exporting one checkpoint at once both leave a whole file."""
    folder = shared_by_workers(tmp_path_factory) / "onnx-exports"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, onnx_exports):
    """Every test gets its own dataset/folder cache so nothing leaks between tests or from the user. Only
    the ONNX exports are shared: their cache is keyed by the checkpoint's content
    (vitkit.inference.onnx_cache_path), so a test can only reuse the export of identical weights, and the
    session-wide checkpoints are exported once rather than once per test."""
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path_factory.mktemp("vitkit-data")))
    cache = tmp_path_factory.mktemp("xdg-cache")
    (cache / "vitkit").mkdir()
    (cache / "vitkit" / "onnx").symlink_to(onnx_exports, target_is_directory=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("VITKIT_DATASET_MIRROR", raising=False)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name} not present at {path}")
    return path


def write_class_folders(root: Path, classes=("cat", "dog", "fox"), per_class=12, size=20, seed=0) -> Path:
    """Real JPEG files whose classes differ in colour, so a model can learn them. `per_class`: one count
    for every class, or one per class."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (200, 200, 30)]
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    for c, (name, count) in enumerate(zip(classes, counts)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.array(colours[c % len(colours)], dtype=np.float64)
            img = np.clip(base + rng.normal(0, 25, (size, size + 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.jpg", quality=90)
    return root


def write_colour_splits(root: Path, train_per_class: int, val_per_class: int = 4) -> Path:
    """`root`/train and `root`/val: class folders of plain colours at 16 px, drawn with different seeds."""
    write_class_folders(root / "train", per_class=train_per_class, size=16, seed=0)
    write_class_folders(root / "val", per_class=val_per_class, size=16, seed=1)
    return root


def vitkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", *args]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_vitkit(
    *args: str, env: dict | None = None, timeout: int = 300, process: bool = False
) -> subprocess.CompletedProcess:
    """`vitkit ARGS` with its output captured as text. In this process by default: the command line's own
    `main`, minus the 4-5 s a fresh interpreter spends importing torch and TorchDynamo. In a real
    `python -m vitkit` subprocess when asked (`process=True`), when the command needs its own
    environment (`env`), or for `--nproc` (the ranks torchrun starts write to the launcher's own stderr)."""
    if process or env is not None or "--nproc" in args:
        return subprocess.run(
            vitkit_cmd(*args), capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout
        )
    from vitkit.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # what the interpreter would do with an uncaught exception
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["vitkit", *args], code, stdout.getvalue(), stderr.getvalue())


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` run with `folder` read-only: mounted so when the tests run as root (who writes into any
    folder whatever its mode), else made so with chmod (the caller restores the mode)."""
    if os.geteuid() == 0:
        remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", remount, str(folder), *command]
    folder.chmod(0o555)
    return command


def shared_by_workers(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the base temporary folder's parent under
    xdist, the base folder itself without it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def new_trainer(cfg, budget=None):
    """A Trainer as `vitkit.training.train` builds one: on the configuration's Runtime, with the command's
    TimeBudget (by default one started now)."""
    from vitkit.training.budget import TimeBudget
    from vitkit.training.build import Runtime
    from vitkit.training.engine import Trainer

    return Trainer(cfg, Runtime.create(cfg), budget or TimeBudget(cfg.time_budget))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A short real training run on digits, shared by the tests that need a checkpoint: trained once per
    session, by whichever worker asks first (the others wait on the lock, then read results.json). Tests
    that change a run folder change a copy."""
    import vitkit

    shared = shared_by_workers(tmp_path_factory)
    out = shared / "digits" / "run"
    with FileLock(str(shared / "digits.lock")):
        if not (out / "results.json").is_file():
            # one torch thread: the suite shares two cores, and oversubscribed threads make a step 10-20x slower
            vitkit.train(out=str(out), epochs=4, progress=False, threads=1)
    return out, {**json.loads((out / "results.json").read_text()), "run_dir": str(out)}


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory):
    """Real digit images (scikit-learn's digits) as PNG files, with their labels."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digit-images")
    digits = load_digits()
    paths = []
    for i in range(12):
        path = folder / f"digit{i:02d}.png"
        Image.fromarray((digits.images[i] / 16 * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths, digits.target[:12].tolist()
