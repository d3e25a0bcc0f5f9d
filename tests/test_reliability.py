"""Nothing lost, nothing silently wrong: failed runs, a full disk, corrupted bytes, two
writers, sweeps whose parent dies, and bad input (one test or more per case of the issue)."""

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import gradscope
from gradscope.analysis.diagnose import diagnose
from gradscope.engine.data import DataError
from gradscope.reading.readers import read_layers, read_status, read_steps, read_weights
from gradscope.record.schema import CorruptLogError, LogBusyError, LogError
from gradscope.record.writer import LogWriter, is_being_written
from gradscope.training.loop import ConfigError, TrainConfig, train

train_mod = importlib.import_module("gradscope.training.loop")
ROOT = Path(__file__).resolve().parent.parent
GRADSCOPE = str(Path(sys.executable).parent / "gradscope")
SMALL = dict(dataset="moons", depth=2, width=8, batch_size=16)


def _cli(*args, cwd=None, timeout=120):
    return subprocess.run([GRADSCOPE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def _one_line_error(r):
    err = r.stderr.strip()
    assert r.returncode != 0, (r.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("gradscope: error: "), err
    return err


# -- 1. a run that fails is recorded as failed -------------------------------------------------
def test_exception_in_progress_is_recorded_as_failed_and_raised(tmp_path):
    out = tmp_path / "run.h5"

    def progress(step, total, loss):
        if step == 3:
            raise ZeroDivisionError("my callback")

    with pytest.raises(ZeroDivisionError, match="my callback"):
        train(TrainConfig(**SMALL, steps=100), out, progress=progress)
    st = read_status(out)
    assert st["status"] == "failed"
    assert "ZeroDivisionError: my callback at step" in st["message"]
    assert list(read_steps(out)["step"]) == [0, 1, 2]  # every complete step is kept
    assert len(read_layers(out)) == 3 * 3
    # a failed run's final parameters are not claimed: NaN
    assert all(np.isnan(W).all() for W, _ in read_weights(out, "final"))
    d = diagnose(out)
    assert d.status == "failed" and d.verdict == "failed" and d.failing
    assert d.headline.startswith("failed: ZeroDivisionError: my callback at step")


def test_memory_error_never_replaces_an_old_log(tmp_path, monkeypatch):
    out = tmp_path / "run.h5"
    train(TrainConfig(**SMALL, steps=5), out)
    before = out.read_bytes()

    def no_memory(*a, **k):
        raise MemoryError("Unable to allocate 3.2 GiB")

    monkeypatch.setattr(train_mod, "forward", no_memory)
    with pytest.raises(MemoryError):
        train(TrainConfig(**SMALL, steps=5, seed=1), out)
    assert out.read_bytes() == before  # not replaced, not touched
    assert not [p for p in tmp_path.iterdir() if p.name != "run.h5"]  # no leftovers
    assert read_status(out)["status"] == "completed"


def test_cli_reports_a_failed_run_in_one_line_and_exits_non_zero(tmp_path):
    r = _cli("train", "--width", "100000", "--out", tmp_path / "w.h5", "-q")
    err = _one_line_error(r)
    assert "out of memory" in err and "74.5 GiB" in err
    assert not (tmp_path / "w.h5").exists()


def _fill_disk_run(folder: Path):
    return _cli("train", "--dataset", "digits", "--epochs", "200", "--out",
                folder / "full.h5", "-q", timeout=300)


def test_disk_full_is_one_line_and_a_readable_failed_log(tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                                 capture_output=True).returncode == 0
    if mounted:
        try:
            r = _fill_disk_run(small)
            err = _one_line_error(r)  # no segfault (exit 139), no traceback
            assert r.returncode == 1
            assert "No space left on device" in err or "write failed" in err, err
            st = read_status(small / "full.h5")
            assert st["status"] == "failed" and "cannot write the log" in st["message"]
            n = st["rows"]["steps"]
            assert 0 < n < 9000
            assert len(read_layers(small / "full.h5")) == 4 * n
        finally:
            subprocess.run(["umount", str(small)], check=False)
        return
    # not root: a fault-injecting write (h5py raises RuntimeError on a full disk)
    real = LogWriter._write_counter
    calls = [0]

    def failing(self):
        calls[0] += 1
        if calls[0] > 3:
            raise RuntimeError("Unable to synchronously flush file (file write failed: "
                               "errno = 28, error message = 'No space left on device')")
        real(self)

    monkeypatch.setattr(LogWriter, "_write_counter", failing)
    out = small / "full.h5"
    monkeypatch.setattr(train_mod, "LogWriter",
                        lambda *a, **k: LogWriter(*a, **{**k, "flush_interval": 0.0}))
    with pytest.raises(RuntimeError):
        train(TrainConfig(**SMALL, steps=50), out)
    monkeypatch.setattr(LogWriter, "_write_counter", real)
    assert read_status(out)["status"] in ("failed", "running")
    assert len(read_steps(out)) >= 1


# -- 2. corrupted bytes are detected, never read; no read hangs -------------------------------
def test_random_overwrites_are_refused_or_harmless_never_silent(tmp_path):
    """benchmarks/bench_corruption.py with a modest number of trials (>= 200 in the docs)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_corruption.py"),
                        "--trials", "16", "--epochs", "1", "--timeout", "20", "--json",
                        "--no-commands"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode in (0, 1), r.stderr[-2000:]
    res = json.loads(r.stdout)
    counts = res["summary"]["counts"]
    bad = [x for x in res["results"] if x["outcome"] not in ("same", "refused")]
    assert not bad, bad
    assert counts["refused"] >= 1  # some overwrite hit what the readers read
    for x in res["results"]:
        if x["outcome"] == "refused":
            assert "corrupted" in x["message"] or "damaged" in x["message"] or \
                "not an HDF5 file" in x["message"] or "not a gradscope log" in x["message"] \
                or "truncated" in x["message"] or "cannot open" in x["message"], x["message"]


def test_corrupted_table_error_names_table_rows_and_column(tmp_path):
    out = tmp_path / "run.h5"
    train(TrainConfig(**SMALL, steps=1100, log_every=1), out)  # 3300 layer rows: 228 in the tail
    with h5py.File(out, "r+") as f:
        ds = f["layers/tail/grad_norm"]
        names = json.loads(f["committed"].attrs["names"])
        slot = int(f["committed"][6 * names.index("layers") + 4])
        i = slot * int(f["layers"].attrs["block_rows"]) + 100
        ds[i] = ds[i] * 1.5  # one value changed, the checksum not
    with pytest.raises(CorruptLogError,
                       match=r"is corrupted: layers rows 3072-3299 \(column grad_norm\)"):
        read_layers(out)
    assert len(read_steps(out)) == 1100  # the other tables are intact
    r = _cli("report", out, "--out", tmp_path / "r.pdf")
    err = _one_line_error(r)
    assert "corrupted" in err and "layers rows" in err
    assert not (tmp_path / "r.pdf").exists()


def test_a_sealed_block_changed_is_refused(tmp_path):
    out = tmp_path / "run.h5"
    w = LogWriter(out, {}, [np.ones((2, 3)), np.zeros(3), np.ones((3, 1)), np.zeros(1)],
                  np.linspace(0, 1, 4), flush_interval=1e9)
    for t in range(5000):
        w.append("steps", step=t, epoch=0, loss=1.0 / (t + 1), accuracy=0.5, lr=0.1,
                 grad_norm_total=float(t), time=0.1 * t)
        w.end_step()
    w.close("completed")
    with h5py.File(out, "r+") as f:
        d = f["steps/data"]
        d[100] = d[100] ^ 0x01
    with pytest.raises(CorruptLogError, match=r"steps rows 0-1023 \(column "):
        read_steps(out)


def test_a_log_not_being_written_never_waits(tmp_path):
    """A killed log whose metadata is damaged: answered at once (HDF5's SWMR retry loop
    slept for hours), and a live writer is told apart by its lock."""
    out = tmp_path / "run.h5"
    w = LogWriter(out, {}, [np.ones((2, 3)), np.zeros(3), np.ones((3, 1)), np.zeros(1)],
                  np.linspace(0, 1, 4), flush_interval=0.0)
    assert is_being_written(out)
    for t in range(50):
        w.append("steps", step=t, epoch=0, loss=1.0, accuracy=0.5, lr=0.1,
                 grad_norm_total=1.0, time=0.0)
        w.end_step()
    killed = tmp_path / "killed.h5"
    shutil.copyfile(out, killed)  # what a SIGKILL leaves: SWMR flags set
    w.close("completed")
    assert not is_being_written(out)
    assert not is_being_written(killed)
    raw = bytearray(killed.read_bytes())
    # damage every object header after the superblock: metadata checksums fail
    for i in range(48, len(raw) - 4):
        if raw[i:i + 4] in (b"OHDR", b"BTHD", b"FRHP", b"FHDB"):
            raw[i + 8:i + 40] = bytes(32)
    killed.write_bytes(bytes(raw))
    t0 = time.monotonic()
    with pytest.raises(LogError):
        read_steps(killed)
    assert time.monotonic() - t0 < 5


# -- 3. sweeps: workers exit with their parent; a claimed run is not trained twice ----------
def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sweep_workers_exit_when_the_parent_is_killed(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([GRADSCOPE, "sweep", "--dataset", "digits", "--depth", "2",
                             "--width", "16", "--epochs", "200", "--seeds", "0,1",
                             "--jobs", "2", "--out-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        partial = out / ".partial"
        while time.monotonic() < deadline:
            if partial.is_dir() and len(list(partial.glob("*.h5"))) >= 2:
                break
            time.sleep(0.2)
        workers = [c for c in _children(proc.pid)]
        assert workers, "no worker processes"
        proc.send_signal(signal.SIGKILL)  # the parent alone, not the group
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "workers outlived their parent"
        # their logs were closed "interrupted" (SIGTERM), readable, not locked
        for p in partial.glob("*.h5"):
            assert not is_being_written(p)
            assert read_status(p)["status"] in ("interrupted", "running")
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_run_claimed_by_a_live_writer_is_not_trained_again(tmp_path):
    from gradscope.training.sweep import PARTIAL_DIR, _local_task

    out = tmp_path / "sweep"
    (out / PARTIAL_DIR).mkdir(parents=True)
    cfg = TrainConfig(**SMALL, steps=5)
    holder = LogWriter(out / PARTIAL_DIR / "r.h5", {}, [np.ones((2, 3)), np.zeros(3)],
                       np.linspace(0, 1, 4))
    try:
        res = _local_task(cfg, "r", str(out))
    finally:
        holder.close("interrupted")
    assert res["status"] == "failed" and "being written by another process" in res["message"]
    assert not (out / "r.h5").exists()


# -- 4. one writer per log ---------------------------------------------------------------------
def test_second_writer_gets_one_line_and_changes_nothing(tmp_path):
    out = tmp_path / "run.h5"
    train(TrainConfig(**SMALL, steps=5), out)
    w = LogWriter(out, {"a": 1}, [np.ones((2, 3)), np.zeros(3)], np.linspace(0, 1, 4))
    try:
        before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
        with pytest.raises(LogBusyError, match=r"is being written by another process \(pid "):
            train(TrainConfig(**SMALL, steps=5, seed=3), out)
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    finally:
        w.close("interrupted")  # w committed no step: the old log stays
    assert read_status(out)["status"] == "completed" and len(read_steps(out)) == 5


def test_two_cli_trains_with_force_on_one_out(tmp_path):
    out = tmp_path / "run.h5"
    first = subprocess.Popen([GRADSCOPE, "train", "--dataset", "digits", "--epochs", "5000",
                              "--out", str(out), "--force", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not is_being_written(out):
            time.sleep(0.05)
        assert is_being_written(out)
        second = _cli("train", "--dataset", "digits", "--epochs", "1", "--seed", "5", "--out",
                      out, "--force", "-q")
        err = _one_line_error(second)
        assert "is being written by another process" in err
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    st = read_status(out)
    assert st["status"] == "interrupted"  # the first run's log, whole, with its own config
    assert gradscope.read_config(out)["seed"] == 0


# -- 5. raw tracebacks become one line --------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "--seed -1; accepted: a whole number >= 0"),
    (["--data-seed", "-1"], "--data-seed -1; accepted: a whole number >= 0"),
    (["--out", ""], "--out ''; accepted"),
])
def test_train_bad_options_one_line(tmp_path, args, needle):
    err = _one_line_error(_cli("train", "--steps", "2", *args, cwd=tmp_path))
    assert needle in err
    assert not (tmp_path / "runs").exists()


def test_sweep_negative_seed_one_line(tmp_path):
    err = _one_line_error(_cli("sweep", "--seeds", "-1,0", "--steps", "2", "--out-dir",
                               tmp_path / "s"))
    assert "-1" in err and "seed" in err


@pytest.mark.parametrize("seed", [1.5, None, True, -2])
def test_config_seed_must_be_a_whole_number(seed):
    with pytest.raises(ConfigError, match="--seed .*accepted: a whole number >= 0"):
        TrainConfig(seed=seed).check()


# -- 6. bad data ------------------------------------------------------------------------------
def _data_error(tmp_path, name, write):
    p = tmp_path / name
    write(p)
    with pytest.raises(DataError) as e:
        train(TrainConfig(dataset=str(p), steps=2), tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    return str(e.value)


def test_bad_data_one_line(tmp_path):
    msg = _data_error(tmp_path, "big.csv",
                      lambda p: p.write_text("a,b,y\n1e308,1,0\n2,3,1\n4,5,0\n6,7,1\n1,1,0\n"))
    assert "do not fit in float32" in msg
    assert "has no feature columns" in _data_error(
        tmp_path, "z.npz", lambda p: np.savez(p, X=np.zeros((50, 0)), y=np.arange(50) % 2))
    assert "is complex" in _data_error(
        tmp_path, "c.npz", lambda p: np.savez(p, X=np.ones((50, 2)) + 1j, y=np.arange(50) % 2))
    assert "header but no rows" in _data_error(tmp_path, "h.csv",
                                               lambda p: p.write_text("a,b\n"))

    def group_x(p):
        with h5py.File(p, "w") as f:
            f.create_group("X")
            f["y"] = np.arange(5)

    assert "is a group, not an array" in _data_error(tmp_path, "g.h5", group_x)


def test_format_version_not_a_number_is_a_log_error(tmp_path):
    out = tmp_path / "run.h5"
    train(TrainConfig(**SMALL, steps=2), out)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = "two"
    with pytest.raises(LogError, match="log format version 'two'"):
        read_steps(out)


def test_sweep_scheduler_that_is_no_address_is_one_line(tmp_path):
    r = _cli("sweep", "--scheduler", "notanaddress", "--steps", "2", "--out-dir", tmp_path / "s",
             timeout=60)
    err = _one_line_error(r)
    assert "--scheduler 'notanaddress'; accepted: an address such as" in err
