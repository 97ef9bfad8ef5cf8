"""The run directory: one writer at a time, crash-proof metrics, readers that race a writer, a full disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxgpt.cli import run_cli
from jaxgpt.plot import main as plot_main
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import LOCK, OWNER, RunDir
from jaxgpt.system.errors import JaxgptError, UsageError

TINY = ["--config=tiny", "--progress=false", "--sample_chars=0"]


def start(out_dir: Path, data: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "JAXGPT_DATA": str(data)}
    return subprocess.Popen([sys.executable, "-m", "jaxgpt.train", *TINY, f"--out_dir={out_dir}", *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a finished run."""
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr.strip()


def steps(out_dir: Path) -> list[int]:
    return [record["step"] for record in RunDir(out_dir).read_metrics()]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_second_writer_is_refused_with_the_holders_name(tmp_path):
    run = tmp_path / "run"
    holder = RunDir(run)
    holder.acquire(print)
    with pytest.raises(UsageError, match=rf"out_dir '{run}' is in use by another run \(pid {os.getpid()} on .+, "
                                         r"since .+\); wait for it to end or choose another --out_dir"):
        RunDir(run).acquire(print)
    holder.release()
    assert sorted(p.name for p in run.iterdir()) == []  # the lock's files go with it
    second = RunDir(run)
    second.acquire(print)
    second.release(remove_if_unused=True)
    assert run.is_dir()  # it did not create the directory, so it leaves it


def test_two_runs_started_together_one_wins_cleanly(tmp_path, small_text_file):
    run = tmp_path / "run"
    flags = ["--max_iters=100", "--eval_interval=20", "--checkpoint_interval=20", "--eval_iters=2"]
    first, second = start(run, small_text_file, *flags), start(run, small_text_file, *flags)
    (won, _, won_err), (lost, _, lost_err) = sorted([finish(first), finish(second)])
    assert won == 0, won_err
    assert lost == 2 and lost_err.splitlines() == [lost_err], lost_err
    assert f"error: out_dir '{run}' is in use by another run (pid " in lost_err
    assert steps(run) == [0, 20, 40, 60, 80, 100]
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [60, 80, 100]
    assert not list(run.rglob("*orbax-checkpoint-tmp*")) and not (run / LOCK).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, small_text_file):
    run = tmp_path / "run"
    process = start(run, small_text_file, "--max_iters=100000", "--checkpoint_interval=20", "--eval_interval=50")
    wait_for(run / "checkpoints" / "20", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / OWNER).exists()  # left behind: a killed process cleans nothing up
    code, stdout, stderr = finish(start(run, small_text_file, "--resume", "--max_iters=40"))
    assert code == 0, stderr
    assert f"taking over {run}: the run that held it (pid {process.pid} on " in stdout
    assert "ended without releasing it" in stdout and not (run / OWNER).exists()


def test_a_half_written_metrics_line_is_dropped_on_read(tmp_path, small_text_file, capsys):
    run = tmp_path / "run"
    assert finish(start(run, small_text_file, "--max_iters=40", "--eval_interval=20", "--eval_iters=2"))[0] == 0
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 60, "train_lo')  # a crash while appending (an older jaxgpt's append)
    assert steps(run) == [0, 20, 40]
    assert "ignoring the last line of" in capsys.readouterr().err
    run_cli(plot_main, [str(run), "--output", str(tmp_path / "plot.png")])
    assert (tmp_path / "plot.png").stat().st_size > 0
    code, _, stderr = finish(start(run, small_text_file, "--resume", "--max_iters=60", "--eval_interval=20",
                                   "--eval_iters=2"))
    assert code == 0, stderr
    assert steps(run) == [0, 20, 40, 60]  # rewritten whole on resume
    record = '{"step": 0, "train_loss": 4.0, "val_loss": 4.1}\n'
    (run / "metrics.jsonl").write_text(record + "not json\n" + record)
    with pytest.raises(JaxgptError, match="metrics.jsonl line 2 is not a metrics record"):
        RunDir(run).read_metrics()


def test_sampling_while_training_with_one_kept_checkpoint(tmp_path, small_text_file):
    """A reader takes no lock: a checkpoint deleted under it is skipped and the newest one read instead."""
    run = tmp_path / "run"
    process = start(run, small_text_file, "--max_iters=100000", "--checkpoint_interval=5", "--keep_checkpoints=1",
                    "--eval_interval=1000", "--eval_iters=1")
    try:
        wait_for(run / "checkpoints" / "5", process)
        loaded, deadline = [], time.monotonic() + 120  # a count, not a time window: the machine may be busy
        while len(loaded) < 10 and time.monotonic() < deadline:
            config, params, _ = checkpoint.load(run)
            loaded.append(config.max_iters)
        assert loaded == [100000] * 10
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)


def test_the_sample_command_while_training_deletes_checkpoints_prints_no_warnings(tmp_path, small_text_file):
    """orbax warns about a step's files vanishing under the reader ("Metadata file does not exist", "Item ...
    could not be restored"; about 1 sample in 18 here before); the reader retries, so the command says nothing."""
    run = tmp_path / "run"
    process = start(run, small_text_file, "--max_iters=100000", "--checkpoint_interval=5", "--keep_checkpoints=1",
                    "--eval_interval=1000", "--eval_iters=1")
    try:
        wait_for(run / "checkpoints" / "5", process)
        for _ in range(6):
            done = subprocess.run([sys.executable, "-m", "jaxgpt.sample", f"--out_dir={run}", "--max_new_tokens=2",
                                   "--num_samples=1"], capture_output=True, text=True, timeout=120)
            assert (done.returncode, done.stderr) == (0, ""), done.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)


def test_plot_into_a_read_only_run_directory_is_one_line(tmp_path, small_text_file, capsys):
    run = tmp_path / "run"
    assert finish(start(run, small_text_file, "--max_iters=20", "--eval_interval=10", "--eval_iters=2"))[0] == 0
    (run / "loss.png").unlink()
    if os.geteuid() != 0:
        run.chmod(0o555)
        reason = "Permission denied"
    elif mount_tmpfs(tmp_path / "disk", 4):  # root may write anywhere: a read-only file system stops it
        shutil.copytree(run, tmp_path / "disk" / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "disk")], check=True)
        run, reason = tmp_path / "disk" / "run", "Read-only file system"
    else:
        pytest.skip("running as root where no read-only file system can be mounted")
    try:
        with pytest.raises(SystemExit) as exited:
            run_cli(plot_main, [str(run)])
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and err.splitlines() == [err]
        assert err == f"error: cannot write {run / 'loss.png'}: {reason}; pass --output=FILE in a writable place"
    finally:
        if reason == "Permission denied":
            run.chmod(0o755)
        else:
            subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=True)


def mount_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0


def test_a_full_disk_mid_run_is_one_line_naming_the_checkpoint_to_resume(tmp_path, small_text_file):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, 13):
        pytest.skip("this machine does not let the tests mount a 13 MB tmpfs (needs root)")
    try:
        run = disk / "run"
        flags = ["--config=small", "--max_iters=200", "--eval_interval=10", "--checkpoint_interval=10",
                 "--eval_iters=2"]
        process = start(run, small_text_file, *flags)
        wait_for(run / "checkpoints" / "20", process)
        with open(disk / "filler", "wb") as filler:  # fill the disk
            while True:
                try:
                    filler.write(b"\0" * 2**20)
                    filler.flush()
                except OSError:
                    break
        code, _, stderr = finish(process)
        assert code == 1 and stderr.splitlines() == [stderr], stderr  # one line, no traceback
        assert "failed (no space left on device); the latest complete checkpoint is step" in stderr
        assert "continue from it with --resume once the problem is fixed" in stderr
        latest = int(stderr.split("the latest complete checkpoint is step ")[1].split(";")[0])
        assert latest >= 20 and (run / "checkpoints" / str(latest)).is_dir()

        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, stdout, stderr = finish(start(run, small_text_file, *flags[:1], "--max_iters=60", "--resume",
                                            *flags[2:]))
        assert code == 0, stderr
        assert f"resuming from step {latest}" in stdout
        assert steps(run) == list(range(0, 61, 10))
        assert not list(run.rglob("*orbax-checkpoint-tmp*"))  # the failed save's leftovers are cleaned up
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
