"""Crash consistency of a run folder: a training process SIGKILLed at every point of an epoch commit resumes to exactly
the run that was never interrupted; the run lock keeps a second writer out; a run stopped before its first checkpoint
can be resumed or started again.

The kills are real: a training process (forked from the test process, which has torch already imported; one case
runs ``python -m crossformers``) sends itself SIGKILL at a named commit point through the test-only hook
``CROSSFORMERS_FAULT_POINT=NAME:EPOCH`` (:mod:`crossformers.engine.run_dir`), so nothing depends on timing.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossformers import cli
from crossformers.engine import load_trained, train
from crossformers.engine.run_dir import FAULT_ENV, RunFolder, RunLockedError

# test_vit at 32 px, 48 training images = 3 steps per epoch, 3 epochs. With this seed and lr the validation top-1 is
# 15.0, 20.0, 17.5 %: epoch 2 improves the best (its commit writes best/), epoch 3 does not (asserted below).
ARGS = ["--model", "timm:test_vit", "--data", "fashion-mnist", "--img-size", "32", "--batch-size", "16",
        "--limit-train", "48", "--limit-val", "40", "--warmup-steps", "0", "--lr", "3e-3", "--seed", "1",
        "--ema-decay", "0.9", "--epochs", "3", "--device", "cpu", "--no-progress"]
STEPS_PER_EPOCH = 3
RUN_FILES = ["best", "config.json", "config.yaml", "curves.png", "last", "metrics.csv", "metrics.jsonl"]

# the commit points reached by each epoch: epoch 1 has nothing to swap out, epoch 3 does not improve the best
FIRST = ["stage-last", "stage-best", "stage-metrics", "journal", "apply-last", "apply-best", "apply-metrics.jsonl",
         "apply-metrics.csv", "apply-curves.png", "unjournal"]
IMPROVING = ["stage-last", "stage-best", "stage-metrics", "journal", "swap-last", "apply-last", "swap-best",
             "apply-best", "apply-metrics.jsonl", "apply-metrics.csv", "apply-curves.png", "unjournal"]
NOT_IMPROVING = ["stage-last", "stage-metrics", "journal", "swap-last", "apply-last", "apply-metrics.jsonl",
                 "apply-metrics.csv", "apply-curves.png", "unjournal"]
ALL_CASES = ([(p, 1) for p in FIRST] + [(p, 2) for p in IMPROVING] + [(p, 3) for p in NOT_IMPROVING])
# the default run: a roll-back, the kill (between the last/ and best/ swaps; the kill after the last/ swap runs
# through `python -m crossformers` below), a roll-forward of a non-improving epoch, and the first commit (no
# checkpoint existed before)
DEFAULT_CASES = [("stage-metrics", 2), ("swap-best", 2), ("apply-metrics.csv", 3), ("journal", 1)]


def _fork_cli(argv: list[str], log: Path, fault: str | None = None) -> int:
    """Run ``crossformers <argv>`` in a forked process (stdout/stderr to ``log``); returns its pid."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 99
        try:
            fh = open(log, "w")  # noqa: SIM115 - lives until os._exit
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            sys.stdout = sys.stderr = fh
            os.environ.pop(FAULT_ENV, None)
            if fault:
                os.environ[FAULT_ENV] = fault
            torch.set_num_threads(1)
            code = cli.main(argv)
        except BaseException:  # noqa: BLE001 - report anything, then leave
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    """Exit code of ``pid``, or minus the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run_cli(argv: list[str], log: Path, fault: str | None = None) -> int:
    return _wait(_fork_cli(argv, log, fault))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def _rows(run: Path) -> list[dict]:
    drop = ("epoch_time_s", "train_images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _csv_epochs(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as fh:
        return [row["epoch"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist) -> dict[str, Path]:
    """An uninterrupted run, and the weights at the end of epoch 2 (the best epoch) from a run stopped there."""
    root = tmp_path_factory.mktemp("reference")
    assert _run_cli(["train", *ARGS, "--output", str(root / "straight")], root / "straight.log") == 0
    assert _run_cli(["train", *ARGS, "--max-steps", str(2 * STEPS_PER_EPOCH), "--output", str(root / "epoch2")],
                    root / "epoch2.log") == 0
    straight = root / "straight"
    top1 = [r["val_top1"] for r in _rows(straight)]
    assert top1[1] > top1[0] and top1[2] <= top1[1], f"the fixture needs epoch 2 best, epoch 3 not: {top1}"
    return {"straight": straight, "epoch2": root / "epoch2" / "last"}


def _assert_like_reference(run: Path, reference: dict[str, Path]) -> None:
    straight = reference["straight"]
    assert sorted(os.listdir(run)) == RUN_FILES  # no .commit/, .lock, .last.old, temp files
    assert sorted(os.listdir(run / "last")) == sorted(os.listdir(straight / "last"))
    for name in ("model.safetensors", "model_ema.safetensors"):
        _assert_same_tensors(_tensors(run / "last" / name), _tensors(straight / "last" / name), f"last/{name}")
    opt = torch.load(run / "last" / "train_state.pt", weights_only=True)["optimizer"]["state"]
    ref_opt = torch.load(straight / "last" / "train_state.pt", weights_only=True)["optimizer"]["state"]
    for i in ref_opt:
        for k in ref_opt[i]:
            assert torch.equal(opt[i][k], ref_opt[i][k]), f"optimizer state {i}/{k} differs"
    # best/ holds epoch 2's weights
    _assert_same_tensors(_tensors(run / "best" / "model.safetensors"),
                         _tensors(reference["epoch2"] / "model.safetensors"), "best/model.safetensors")
    assert json.loads((run / "best" / "meta.json").read_text())["epoch"] == 2
    assert _rows(run) == _rows(straight)
    assert _csv_epochs(run) == ["1", "2", "3"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _kill_and_resume(tmp_path: Path, point: str, epoch: int, reference: dict[str, Path]) -> str:
    run = tmp_path / "run"
    code = _run_cli(["train", *ARGS, "--output", str(run)], tmp_path / "killed.log", fault=f"{point}:{epoch}")
    assert code == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    code = _run_cli(["train", "--resume", str(run), "--no-progress"], tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    assert code == 0, log
    _assert_like_reference(run, reference)
    return log


def _check_resume_log(log: str, point: str, epoch: int) -> None:
    if point.startswith("stage-"):
        assert "discarded an uncommitted epoch" in log
        if epoch == 1:
            assert "stopped before its first checkpoint: training starts from the beginning" in log
        else:
            assert "resumed from" in log and f"at epoch {epoch}, batch 0" in log
    elif point == "unjournal":  # the commit was complete, only .commit/ was left
        assert "removed the leftovers of a completed commit" in log
    else:
        assert f"completed the interrupted commit of epoch {epoch}" in log
        if epoch < 3:
            assert f"at epoch {epoch + 1}, batch 0" in log


@pytest.mark.parametrize("point, epoch", DEFAULT_CASES, ids=[f"{p}:{e}" for p, e in DEFAULT_CASES])
def test_kill_during_commit_then_resume(tmp_path, reference, point, epoch):
    _check_resume_log(_kill_and_resume(tmp_path, point, epoch, reference), point, epoch)


@pytest.mark.slow
@pytest.mark.parametrize("point, epoch", [c for c in ALL_CASES if c not in DEFAULT_CASES],
                         ids=[f"{p}:{e}" for p, e in ALL_CASES if (p, e) not in DEFAULT_CASES])
def test_kill_during_commit_then_resume_every_point(tmp_path, reference, point, epoch):
    _check_resume_log(_kill_and_resume(tmp_path, point, epoch, reference), point, epoch)


def test_fault_points_cover_every_commit_step():
    from crossformers.engine.run_dir import FAULT_POINTS

    assert sorted(set(FIRST) | set(IMPROVING) | set(NOT_IMPROVING)) == sorted(FAULT_POINTS)


def test_kill_of_the_command_line_process(tmp_path, reference):
    # the case end to end through `python -m crossformers`: killed after last/ of epoch 2 was swapped out and
    # before best/ and the metrics row were in place
    run = tmp_path / "run"
    env = {**os.environ, FAULT_ENV: "swap-last:2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "crossformers", "train", *ARGS, "--output", str(run)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "last").exists() and (run / ".commit" / "old" / "last").is_dir()
    # a reader (eval / predict / load_trained) completes the commit: it sees epoch 2 in last/ and in best/
    for prefer in ("best", "last"):
        _, meta = load_trained(run, prefer=prefer)
        assert meta["epoch"] == 2 and meta["checkpoint_dir"] == str(run / prefer)
    assert sorted(os.listdir(run)) == RUN_FILES and _csv_epochs(run) == ["1", "2"]
    assert _run_cli(["train", "--resume", str(run), "--no-progress"], tmp_path / "resumed.log") == 0
    _assert_like_reference(run, reference)


def test_run_stopped_before_first_checkpoint_can_be_started_again(tmp_path, reference):
    run = tmp_path / "run"
    assert _run_cli(["train", *ARGS, "--output", str(run)], tmp_path / "killed.log", fault="stage-last:1") == -9
    assert sorted(os.listdir(run)) == [".commit", ".lock", "config.json", "config.yaml"]
    # the same command again (no --resume): allowed, nothing to delete by hand
    assert _run_cli(["train", *ARGS, "--output", str(run)], tmp_path / "again.log") == 0
    assert "stopped before its first checkpoint: starting it again" in (tmp_path / "again.log").read_text()
    _assert_like_reference(run, reference)


def test_run_with_only_config_json(tmp_path, tiny_config, capsys):
    # what an older version left after a kill before the first checkpoint: config.json and an empty temp folder
    cfg = tiny_config()
    os.makedirs(f"{cfg.output}/.last.tmp-x1y2")
    cfg.to_json(f"{cfg.output}/config.json")
    assert cli.main(["train", "--resume", cfg.output, "--no-progress"]) == 0
    assert sorted(os.listdir(cfg.output)) == RUN_FILES
    assert _csv_epochs(Path(cfg.output)) == ["1"]
    # a plain re-run of such a folder is allowed as well
    again = tiny_config("again")
    os.makedirs(again.output)
    again.to_json(f"{again.output}/config.json")
    train(again, progress=False)
    assert sorted(os.listdir(again.output)) == RUN_FILES


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_second_writer_fails_and_touches_nothing(tmp_path, reference, capsys):
    run = tmp_path / "run"
    pid = _fork_cli(["train", *ARGS, "--output", str(run)], tmp_path / "first.log", fault="stage-last:2:stop")
    _, status = os.waitpid(pid, os.WUNTRACED)  # the first writer froze in the middle of epoch 2's commit
    try:
        assert os.WIFSTOPPED(status)
        before = _snapshot(run)
        assert "config.json" in before and any(k.startswith(".commit/new/last/") for k in before)
        for argv in (["train", *ARGS, "--output", str(run)], ["train", "--resume", str(run), "--no-progress"]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: run directory {run} is in use by another training "
                                                       f"process (pid {pid} on "), err
            assert err[0].endswith("wait for it to finish, or choose another --output")
            assert _snapshot(run) == before
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _wait(pid) == 0, (tmp_path / "first.log").read_text()
    _assert_like_reference(run, reference)


def test_two_writers_started_together(tmp_path, reference):
    # whichever gets the folder first trains; the other stops with one error line (the lock, or the finished run)
    run = tmp_path / "run"
    pids = [_fork_cli(["train", *ARGS, "--output", str(run)], tmp_path / f"w{i}.log") for i in range(2)]
    codes = [_wait(pid) for pid in pids]
    assert sorted(codes) == [0, 2], codes
    loser = (tmp_path / f"w{codes.index(2)}.log").read_text().strip().splitlines()
    assert loser[-1].startswith("error: ") and ("in use by another training process" in loser[-1]
                                                or "already exists and is not empty" in loser[-1])
    _assert_like_reference(run, reference)


def test_lock_file(tmp_path):
    first, second = RunFolder(tmp_path / "run"), RunFolder(tmp_path / "run")
    assert first.lock() is True  # created the folder
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on "):
        second.lock()
    first.unlock()
    assert os.listdir(tmp_path / "run") == []  # the lock file goes with the lock
    (tmp_path / "run" / ".lock").write_text("pid 1 on elsewhere")  # left by a killed process: not a lock
    assert second.lock() is False
    second.unlock()


def test_output_path_that_is_a_file(tmp_path, tiny_config, capsys):
    cfg = tiny_config()
    Path(cfg.output).write_text("my notes")
    assert cli.main(["train", *ARGS[:2], "--data", cfg.data, "--output", cfg.output]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output path {cfg.output} is a file, not a directory: choose a new --output (a directory "
                   "path)"]
    assert Path(cfg.output).read_text() == "my notes"


def test_failed_start_leaves_nothing(tmp_path, tiny_config):
    from crossformers.errors import UnknownModelError

    cfg = tiny_config("a/b/run", model="fcaformer_nan")
    with pytest.raises(UnknownModelError):
        train(cfg, progress=False)
    assert os.listdir(tmp_path) == []  # neither the run folder, its lock file nor the parents it created


def test_commit_journal_written_by_something_else(tmp_path):
    from crossformers.errors import CheckpointError

    folder = RunFolder(tmp_path / "run")
    folder.lock()
    try:
        staged = folder.begin()
        (staged / "metrics.csv").write_text("epoch\n1\n")
        folder.commit(["metrics.csv"], epoch=1)
        assert sorted(os.listdir(folder.path)) == [".lock", "metrics.csv"]
        (folder.commit_dir / "new").mkdir(parents=True)
        (folder.commit_dir / "journal.json").write_text('{"epoch": 2, "items": ["../outside"]}')
        with pytest.raises(CheckpointError, match=r"the commit journal .*journal.json of an interrupted epoch is "
                                                  r"unreadable \(unknown items \['../outside'\]\)"):
            folder.recover()
        assert (folder.commit_dir / "journal.json").is_file()  # left for the user to inspect
    finally:
        folder.unlock()


def test_lock_dies_with_its_process_not_with_forked_children(tmp_path):
    # a DataLoader worker (forked) that outlives a killed training process must not keep the run folder locked
    holder = os.fork()
    if holder == 0:
        try:
            RunFolder(tmp_path / "run").lock()
            worker = os.fork()
            if worker == 0:
                os.kill(os.getpid(), signal.SIGSTOP)  # a worker still alive when its parent is killed
                os._exit(0)
            (tmp_path / "worker.pid").write_text(str(worker))
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    assert _wait(holder) == -signal.SIGKILL
    worker = int((tmp_path / "worker.pid").read_text())
    try:
        folder = RunFolder(tmp_path / "run")
        assert folder.lock() is False
        folder.unlock()
    finally:
        os.kill(worker, signal.SIGKILL)  # not our child (its parent was the holder): nothing to wait for


def test_run_killed_before_config_json(tmp_path, tiny_config, capsys):
    from crossformers.errors import CheckpointError

    # killed while starting (after taking the lock, before config.json): --resume says to start again, which works
    cfg = tiny_config()
    os.makedirs(cfg.output)
    Path(cfg.output, ".lock").write_text("pid 1 on elsewhere")
    assert cli.main(["train", "--resume", cfg.output]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot resume {cfg.output}: the run stopped while starting, before it saved its options "
        "(config.json) or a checkpoint; run the original train command again (without --resume), it can use the "
        "same --output"]
    train(cfg, progress=False)
    assert sorted(os.listdir(cfg.output)) == RUN_FILES
    # resuming a folder that does not exist creates nothing
    missing = str(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {missing} does not exist"):
        train(cfg.replace(resume=missing, output=missing), progress=False)
    assert not os.path.exists(missing)
