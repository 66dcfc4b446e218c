"""training/rundir.py: claiming a run folder, writing its records atomically, what a crash leaves behind,
reading a run back, and the refusals of a resume. Real files, no training."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from vitkit import fileio
from vitkit.errors import MissingFile, VitkitError
from vitkit.models import create_model
from vitkit.runfiles import ARGS, LAST, LOCK, METRICS, RESULTS, RUN_RECORD, TRAINER_STATE
from vitkit.training import resume_config, rundir
from vitkit.training.resolve import make_config, saved_config
from vitkit.training.rundir import RunDir


@pytest.fixture(scope="module")
def cfg():
    return make_config(data="digits", epochs=2, model_args={"depth": 1})


def tiny_model():
    size = dict(embed_dim=8, depth=1, num_heads=1, mlp_dim=8)
    return create_model("vit_micro_patch4_32", num_classes=2, image_size=8, **size)


def leftovers(folder) -> list[str]:
    """Temporary files an interrupted atomic write leaves (.NAME.XXXX.tmp)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- claiming


def test_a_new_run_claims_a_numbered_folder_and_holds_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "LOCK_WAIT_S", 0.2)
    first = RunDir.claim(None, tmp_path / "runs" / "digits", resume=False)
    second = RunDir.claim(None, tmp_path / "runs" / "digits", resume=False)
    assert (first.path.name, second.path.name) == ("digits", "digits-2")
    assert (first.path / LOCK).is_file()
    with pytest.raises(VitkitError, match=f"run folder {first.path} is in use by another vitkit process"):
        RunDir.claim(str(first.path), tmp_path, resume=True)
    first.release()
    RunDir.claim(str(first.path), tmp_path, resume=True).release()  # released: a resume may take it
    second.release()


def test_a_folder_that_holds_something_else_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(VitkitError, match=r"--out .*photos already holds files that are not a vitkit run \(cat.jpg\)"):
        RunDir.claim(str(tmp_path / "photos"), tmp_path, resume=False)
    assert not (tmp_path / "photos" / LOCK).exists()  # refused before the lock file is left there
    (tmp_path / "a-file").write_text("")
    with pytest.raises(VitkitError, match="--out .*a-file is a file, not a folder"):
        RunDir.claim(str(tmp_path / "a-file"), tmp_path, resume=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_RECORD).write_text("{}")
    with pytest.raises(VitkitError, match="already holds a run: pass --resume to continue it, or choose another --out"):
        RunDir.claim(str(tmp_path / "run"), tmp_path, resume=False)


# ----------------------------------------------------------------------------- records


def test_args_yaml_reads_back_as_the_configuration_it_records(tmp_path, cfg):
    run = RunDir(tmp_path)
    run.write_config(cfg)
    recorded = yaml.safe_load((tmp_path / ARGS).read_text())
    assert "out" not in recorded and "resume" not in recorded  # a repeat goes to its own folder
    assert saved_config(tmp_path) == cfg
    run.write_config(cfg, ran=(2, "time_budget"))  # a finished run says how it ended, as a comment
    text = (tmp_path / ARGS).read_text()
    assert text.startswith("# As requested. The run trained 2 epoch(s), stopped by the --time-budget clock")
    assert saved_config(tmp_path) == cfg and leftovers(tmp_path) == []


def test_run_json_records_the_status_and_what_failed(tmp_path):
    run = RunDir(tmp_path)
    assert not run.status_written
    run.write_status("running", {"epochs_run": 0})
    record = json.loads((tmp_path / RUN_RECORD).read_text())
    assert record["status"] == "running" and record["epochs_run"] == 0 and record["run_dir"] == str(tmp_path)
    assert record["versions"]["torch"] == torch.__version__ and "error" not in record and run.status_written
    run.write_status("failed", {"epochs_run": 1}, error="KeyboardInterrupt: interrupted")
    record = json.loads((tmp_path / RUN_RECORD).read_text())
    assert (record["status"], record["error"]) == ("failed", "KeyboardInterrupt: interrupted")
    assert record["started"] == run.started


def test_metrics_columns_and_results(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"val_loss": 1.0, "lr": 0.1, "epoch": 1, "train_loss": 2.0}, {"epoch": 2, "val_map": 0.5}])
    header = (tmp_path / METRICS).read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_loss,val_map,lr"  # the epoch, training, validation, the rest
    run.write_results({"metrics": {"top1": 0.9}})
    assert json.loads((tmp_path / RESULTS).read_text()) == {"metrics": {"top1": 0.9}}


def test_another_rank_writes_nothing(tmp_path, cfg):
    run = RunDir(tmp_path, writer=False)
    run.write_config(cfg)
    run.write_status("running", {})
    run.write_results({})
    run.save_checkpoint(LAST, tiny_model(), {}, {"step": 1})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- crashes


def test_a_failed_write_keeps_the_previous_record_and_no_temporary_file(tmp_path, cfg, monkeypatch):
    run = RunDir(tmp_path)
    run.write_status("running", {"epochs_run": 1})
    run.write_config(cfg)
    before = {name: (tmp_path / name).read_text() for name in (RUN_RECORD, ARGS)}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.json, "dumps", fail)
    with pytest.raises(OSError, match="disk full"):
        run.write_status("complete", {"epochs_run": 2})
    monkeypatch.setattr(rundir.yaml, "safe_dump", fail)
    with pytest.raises(OSError, match="disk full"):
        run.write_config(cfg, ran=(2, "epochs"))
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert leftovers(tmp_path) == []


def test_a_process_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    run = RunDir(tmp_path)
    run.write_status("running", {"epochs_run": 1})
    child = os.fork()
    if child == 0:  # killed half way through writing the new record: no cleanup runs
        try:
            with fileio.atomic_path(tmp_path / RUN_RECORD) as tmp:
                tmp.write_text('{"status": "compl')
                os._exit(9)
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 9
    assert json.loads((tmp_path / RUN_RECORD).read_text())["status"] == "running"
    assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].startswith(f".{RUN_RECORD}.")


def test_a_checkpoint_swap_cut_between_its_renames_is_found_and_repaired(tmp_path):
    run = RunDir(tmp_path)
    model = tiny_model()
    run.save_checkpoint(LAST, model, {"class_names": ["a", "b"]}, {"step": 7})
    # a crash after last/ was moved aside and before the new copy took its place
    (tmp_path / LAST).rename(tmp_path / f"{LAST}.old")
    found = run.find_last()
    assert found == tmp_path / f"{LAST}.old" and run.load_trainer_state(found) == {"step": 7}
    run.save_checkpoint(LAST, model, {"class_names": ["a", "b"]}, {"step": 8})
    assert run.find_last() == tmp_path / LAST and run.load_trainer_state(tmp_path / LAST) == {"step": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # no .old or .tmp left


def test_a_damaged_trainer_state_says_what_to_do(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(LAST, tiny_model(), {}, {"step": 7})
    (tmp_path / LAST / TRAINER_STATE).write_bytes(b"not a torch file")
    with pytest.raises(VitkitError, match="trainer.pt cannot be read .*; the file is damaged: start the run again"):
        run.load_trainer_state(run.find_last())


# ----------------------------------------------------------------------------- reading back and resuming


def test_reading_a_folder_that_is_no_run_or_a_damaged_one(tmp_path):
    with pytest.raises(MissingFile, match=r"not a vitkit run folder \(no args.yaml\): nothing to resume"):
        saved_config(tmp_path)
    (tmp_path / ARGS).write_text("epochs: [2\n")
    with pytest.raises(VitkitError, match=r"args.yaml: .*not valid YAML .*; restore it from a backup"):
        saved_config(tmp_path)
    (tmp_path / ARGS).write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(VitkitError, match=r"unknown option\(s\) learning_rate.*; restore it from a backup"):
        saved_config(tmp_path)


def test_resume_takes_only_the_changes_that_leave_the_computation_alone(tmp_path, cfg):
    RunDir(tmp_path).write_config(cfg)
    with pytest.raises(VitkitError) as refused:
        resume_config(tmp_path, lr=cfg.lr * 2, seed=cfg.seed + 1, epochs=5)
    message = str(refused.value)
    assert message.startswith(f"--lr, --seed cannot change when resuming (the run was started with lr={cfg.lr!r}, ")
    assert "only --memory-limit-gb, --epochs" in message and message.endswith("Start a new run to change the others")
    resumed = resume_config(tmp_path, epochs=5, lr=cfg.lr, threads=1)  # lr unchanged: not a change
    assert (resumed.epochs, resumed.threads, resumed.resume, resumed.out) == (5, 1, True, str(tmp_path))


def test_a_budget_run_extended_by_epochs_drops_its_clock(tmp_path):
    budget = make_config(data="digits", time_budget=3.0, model_args={"depth": 1})
    RunDir(tmp_path).write_config(budget)
    assert resume_config(tmp_path).time_budget == 3.0
    assert resume_config(tmp_path, epochs=9).time_budget == 0.0  # the epochs, not the clock, end it


def test_a_sized_budget_run_without_its_recorded_size_is_refused(tmp_path):
    sized = make_config(data="digits", preset="cifar-hybrid", time_budget=3.0)
    values = {k: v for k, v in sized.to_dict().items() if k not in ("out", "resume", "budget_size", "model")}
    (tmp_path / ARGS).write_text(yaml.safe_dump(values))  # args.yaml from before the size was recorded
    with pytest.raises(VitkitError, match="does not record the model size this --time-budget run chose"):
        saved_config(tmp_path)
    chosen = {**sized.budget_size.to_dict(), "model_args": {"embed_dim": 256}}
    chosen["candidates"] = [{**c, "affordable_epochs": 20.0} for c in chosen["candidates"]]
    (tmp_path / RUN_RECORD).write_text(json.dumps({"budget_size": chosen}))
    restored = saved_config(tmp_path)  # run.json recorded the choice: the architecture it gave
    assert restored.model == "vit_hybrid_micro_32" and restored.model_args["embed_dim"] == 256


# args.yaml's budget_size as --time-budget has written it since the choice was recorded there: the
# chosen changes, then each candidate with its measured epochs.
RECORDED_SIZE = """\
budget_size:
  model_args:
    embed_dim: 256
    num_heads: 8
  candidates:
  - model_args:
      embed_dim: 256
      num_heads: 8
    min_epochs: 12
    affordable_epochs: 14.2
  - model_args:
      depth: 3
    min_epochs: 15
    affordable_epochs: 9.8
"""


def test_a_recorded_budget_size_loads_and_is_written_back_unchanged(tmp_path):
    """A run folder's recorded size choice resumes as the architecture it gave, and the configuration
    writes the record back exactly as it was read (run.json carries the same record)."""
    values = make_config(data="digits", preset="cifar-hybrid").to_dict()
    values = {k: v for k, v in values.items() if k not in ("out", "resume", "budget_size")}
    values["model_args"].update(embed_dim=256, num_heads=8)  # the chosen size, as the run was built
    (tmp_path / ARGS).write_text(yaml.safe_dump(values, sort_keys=False) + RECORDED_SIZE)
    restored = resume_config(tmp_path)
    assert restored.budget_size.model_args == {"embed_dim": 256, "num_heads": 8}
    assert restored.model == "vit_hybrid_micro_32" and restored.model_args["embed_dim"] == 256
    assert [c.affordable_epochs for c in restored.budget_size.candidates] == [14.2, 9.8]
    out = tmp_path / "again"
    out.mkdir()
    RunDir(out).write_config(restored)
    assert (out / ARGS).read_text().split("budget_size:\n")[1] == RECORDED_SIZE.split("budget_size:\n")[1]
    assert restored.budget_size.to_dict() == yaml.safe_load(RECORDED_SIZE)["budget_size"]
