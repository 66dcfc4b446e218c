"""The options of the commands that are not training's are declared once (option() dataclasses): the
Python functions default to the very values the flags do, the parser refuses a value out of bounds in
one line naming the flag, and the serve limits' flags in MiB and megapixels become the limits in bytes
and pixels."""

import argparse
import contextlib
import inspect
import io

import pytest
from conftest import run_vitkit

import vitkit
from vitkit.api import LRFindOptions
from vitkit.cli import build_parser
from vitkit.data.pack import PackOptions, pack_folder
from vitkit.eval.checkpoint import EvaluationOptions
from vitkit.export.checkpoint import ExportOptions
from vitkit.export.int8 import export_int8
from vitkit.inference import Classifier
from vitkit.inference.predict import PredictOptions, predict_paths
from vitkit.serve.limits import MIB, ServeLimits
from vitkit.viz.explain import ExplainOptions, explain_image

# (the command line that parses with every default, the function, its parameter, the declaring class and field)
SHARED_DEFAULTS = [
    (["lr-find"], vitkit.lr_find, "steps", LRFindOptions, "steps"),
    (["lr-find"], vitkit.lr_find, "start_lr", LRFindOptions, "start_lr"),
    (["lr-find"], vitkit.lr_find, "end_lr", LRFindOptions, "end_lr"),
    (["lr-find"], vitkit.lr_find, "plot", LRFindOptions, "plot"),
    (["eval", "RUN"], vitkit.evaluate, "batch_size", EvaluationOptions, "batch_size"),
    (["top-losses", "RUN"], vitkit.top_losses, "count", EvaluationOptions, "count"),
    (["top-losses", "RUN"], vitkit.top_losses, "out", EvaluationOptions, "out"),
    (["top-losses", "RUN"], vitkit.top_losses, "batch_size", EvaluationOptions, "batch_size"),
    (["predict", "RUN", "x.png"], predict_paths, "topk", PredictOptions, "topk"),
    (["predict", "RUN", "x.png"], predict_paths, "batch_size", PredictOptions, "batch_size"),
    (["predict", "RUN", "x.png"], Classifier.predict, "batch_size", PredictOptions, "batch_size"),
    (["explain", "RUN", "x.png", "--out", "x.png"], explain_image, "topk", ExplainOptions, "topk"),
    (["explain", "RUN", "x.png", "--out", "x.png"], explain_image, "method", ExplainOptions, "method"),
    (["export", "RUN", "m.onnx"], export_int8, "calibration_images", ExportOptions, "calibration_images"),
    (["data", "pack", "IN", "OUT"], pack_folder, "quality", PackOptions, "quality"),
    (["data", "pack", "IN", "OUT"], pack_folder, "shard_mb", PackOptions, "shard_mb"),
]


@pytest.mark.parametrize("argv, function, parameter, cls, field", SHARED_DEFAULTS)
def test_the_python_api_and_the_command_line_default_to_one_declaration(argv, function, parameter, cls, field):
    declared = getattr(cls, field)
    assert inspect.signature(function).parameters[parameter].default is declared, (function.__name__, parameter)
    assert getattr(build_parser().parse_args(argv), field) == declared, (argv, field)


@pytest.mark.parametrize(
    "args, refusal",
    [
        (("lr-find", "--steps", "1"), "argument --steps: 1 is below the minimum of 2"),
        (("lr-find", "--end-lr", "inf"), "argument --end-lr: inf must be a positive number"),
        (("top-losses", "RUN", "--count", "0"), "argument --count: 0 is below the minimum of 1"),
        (("eval", "RUN", "--batch-size", "2.5"), "argument --batch-size: '2.5' is not a whole number"),
        (("predict", "RUN", "x.png", "--topk", "0"), "argument --topk: 0 is below the minimum of 1"),
        (("serve", "RUN", "--max-upload-mb", "-1"), "argument --max-upload-mb: -1 must be a positive number"),
        (("serve", "RUN", "--port", "-1"), "argument --port: -1 is below the minimum of 0"),
        (
            ("export", "RUN", "m.onnx", "--calibration-images", "0"),
            "argument --calibration-images: 0 is below the minimum of 1",
        ),
        (("data", "pack", "IN", "OUT", "--quality", "101"), "argument --quality: 101 is above the maximum of 100"),
    ],
)
def test_a_value_out_of_bounds_is_refused_in_one_line_naming_the_flag(args, refusal):
    result = run_vitkit(*args)
    command = " ".join(args[:2]) if args[0] == "data" else args[0]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == f"vitkit {command}: error: {refusal}", result.stderr


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "RUN", *flags])


def serve_help() -> str:
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        build_parser().parse_args(["serve", "--help"])
    return out.getvalue()


def test_the_serve_limits_flags_take_mib_and_megapixels_and_default_to_the_declared_limits():
    assert ServeLimits.from_flags(vars(serve_args())) == ServeLimits()
    given = serve_args("--max-upload-mb", "1.5", "--max-megapixels", "2", "--max-files", "3")
    limits = ServeLimits.from_flags(vars(given))
    assert (limits.max_upload_bytes, limits.max_pixels, limits.max_files) == (int(1.5 * MIB), 2_000_000, 3)
    assert isinstance(limits.client_timeout, float) and isinstance(limits.max_upload_bytes, int)
    assert "one request's body (default: 10)" in serve_help()  # 10 MiB, in the flag's unit


def test_an_inflight_budget_below_one_upload_is_refused_naming_both_flags():
    result = run_vitkit("serve", "RUN", "--max-upload-mb", "20", "--max-inflight-mb", "10")
    assert result.returncode == 2 and result.stderr.strip() == (
        "vitkit serve: error: --max-inflight-mb 10 is below --max-upload-mb 20: a single full-size upload could "
        "never be accepted"
    ), result.stderr


def test_a_switch_off_by_default_has_no_off_form_and_a_required_option_is_required():
    parser = build_parser()
    assert parser.parse_args(["eval", "RUN", "--json", "--flip-tta"]).json is True
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "RUN", "--no-json"])
    result = run_vitkit("explain", "RUN", "x.png")
    assert result.returncode == 2 and "the following arguments are required: --out" in result.stderr
