"""The run log (log.py): written and read back, the committed-rows counter, live reading,
files left by SIGKILL and SIGTERM, and one-line errors for files that are not logs."""

import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import gradscope
from gradscope.reading.readers import (
    read_config,
    read_dead_units,
    read_epochs,
    read_histograms,
    read_layers,
    read_status,
    read_steps,
    read_weights,
)
from gradscope.record.schema import LAYER_COLUMNS, CorruptLogError, LogError
from gradscope.record.writer import LogWriter
from gradscope.training.loop import TrainConfig, train

# the module (the package attribute gradscope.training.loop is the train function)
train_mod = importlib.import_module("gradscope.training.loop")
GRADSCOPE = str(Path(sys.executable).parent / "gradscope")
READERS = [read_config, read_status, read_steps, read_layers, read_epochs, read_dead_units,
           read_histograms, read_weights]
CONFIG = {"dataset": "toy", "depth": 2, "widths": [4, 5], "lr": 0.1}
EDGES = np.linspace(0.0, 1.0, 6)  # 5 bins of width 0.2
#: a log written by the version-1 writer (gradscope at commit b4b4348)
V1_LOG = Path(__file__).parent / "data" / "log_v1.h5"


def _params(scale=1.0):
    return [scale * np.arange(12.0).reshape(3, 4), np.full(4, 0.25 * scale),
            scale * np.ones((4, 5)), np.full(5, -0.5 * scale),
            scale * np.ones((5, 2)), np.zeros(2)]


def _step_row(t):
    return {"step": t, "epoch": t // 3, "loss": 1.0 / (t + 1), "accuracy": t / 10, "lr": 0.1,
            "grad_norm_total": t + 0.5, "time": 0.25 * t}


def _layer_rows(t):
    cols = [c for c in LAYER_COLUMNS if c not in ("step", "layer")]
    rows = {c: 100.0 * t + 10.0 * np.arange(3) + i for i, c in enumerate(cols)}
    for c in ("act_mean", "act_std", "saturated_frac"):
        rows[c][2] = np.nan
    return dict(step=t, layer=np.arange(3), **rows)


def _probe_rows(t):
    return {"step": t, "layer": np.arange(3), "dead_frac": np.array([0.25, 0.4, np.nan]),
            "probe_act_mean": np.array([t, t + 1, np.nan]),
            "probe_act_std": np.array([1, 2, np.nan]),
            "probe_saturated_frac": np.array([0.5, 0.1, np.nan])}


def _dead(t):
    return [np.array([1, 0, 0, t % 2], np.uint8), np.array([0, 1, 1, 0, 0], np.uint8)]


def _hist(t):
    return [np.array([1, 2, 3, 4, t]), np.array([5, 0, 0, 0, 5 + t])]


def _write_log(path, n_steps=5, close=True, **kw):
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9, **kw)
    for t in range(n_steps):
        w.append("steps", **_step_row(t))
        w.append("layers", 3, **_layer_rows(t))
        if t in (0, 4):
            w.append("probes", 3, **_probe_rows(t))
            w.append_units(t, _dead(t), _hist(t))
        if w.snaps is not None and t in (0, 2):
            w.append_snapshot(t, _params(t + 1))
        w.end_step()
    w.append("epochs", epoch=0, step=3, train_loss=0.5, train_accuracy=0.6, val_loss=0.7,
             val_accuracy=np.nan, time=1.0)
    w.end_step()
    if close:
        w.close("completed", "all good", _params(-1))
    return w


# -- written and read back ----------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "log.h5"
    _write_log(path, snapshots=True)
    assert read_config(path) == CONFIG
    st = read_status(path)
    assert (st["status"], st["message"], st["last_step"]) == ("completed", "all good", 4)
    assert st["rows"] == {"steps": 5, "layers": 15, "epochs": 1, "probes": 6, "probe_units": 2,
                          "snapshots": 2}
    steps = read_steps(path)
    written = pd.DataFrame([_step_row(t) for t in range(5)])
    pd.testing.assert_frame_equal(steps[list(written.columns)], written, check_dtype=False)
    assert steps["step"].dtype == np.int64 and steps["loss"].dtype == np.float64
    layers = read_layers(path)
    assert len(layers) == 15
    for t in range(5):
        rows = layers[layers.step == t].sort_values("layer")
        for c, v in _layer_rows(t).items():
            np.testing.assert_array_equal(rows[c].to_numpy(), np.broadcast_to(v, 3))
        assert (rows["epoch"] == t // 3).all()
        probes = _probe_rows(t)
        for c in ("dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac"):
            if t in (0, 4):
                np.testing.assert_array_equal(rows[c].to_numpy(), probes[c])
            else:
                assert rows[c].isna().all()
    ep = read_epochs(path)
    pd.testing.assert_frame_equal(ep, pd.DataFrame([{
        "epoch": 0, "step": 3, "train_loss": 0.5, "train_accuracy": 0.6, "val_loss": 0.7,
        "val_accuracy": np.nan, "time": 1.0}]))
    psteps, dead = read_dead_units(path)
    np.testing.assert_array_equal(psteps, [0, 4])
    assert [d.dtype for d in dead] == [bool, bool]
    np.testing.assert_array_equal(dead[0], [[1, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(dead[1], [[0, 1, 1, 0, 0]] * 2)
    h = read_histograms(path)
    assert len(h) == 2 * 2 * 5
    one = h[(h.step == 4) & (h.layer == 0)]
    np.testing.assert_allclose(one["bin_left"], [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(one["bin_right"], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(one["count"], [1, 2, 3, 4, 4])
    # density = count / all counts of the row / bin width: 14 activations, width 0.2
    np.testing.assert_allclose(one["density"], np.array([1, 2, 3, 4, 4]) / 14 / 0.2)
    for step, scale in ((0, 1.0), ("initial", 1.0), ("final", -1.0), (2, 3.0)):
        got = read_weights(path, step=step)
        want = _params(scale)
        assert len(got) == 3
        for l, (W, b) in enumerate(got):
            np.testing.assert_array_equal(W, want[2 * l])
            np.testing.assert_array_equal(b, want[2 * l + 1])
    with pytest.raises(LogError, match=r"no snapshot at step 1 .*snapshots at: 0, 2"):
        read_weights(path, step=1)


def _decode_doc(data, dtype, n, period=1):
    """docs/log-format.md's decoding of one encoded column of a 1-D table, written out
    independently of gradscope.record.blocks: inflate, un-shuffle, undo the delta/XOR."""
    import zlib
    k = np.dtype(dtype).itemsize
    u = np.frombuffer(zlib.decompress(data), np.uint8).reshape(k, n).T.copy().view(f"u{k}")[:, 0]
    if np.dtype(dtype).kind == "i":
        return np.cumsum(u.view(dtype))
    out = u.copy()
    for i in range(period, n):
        out[i] ^= out[i - period]
    return out.view(dtype)


def test_layout_readable_with_h5py_alone(tmp_path):
    """docs/log-format.md (version 2): the counter, the sealed blocks and the tail slots."""
    import zlib
    path = tmp_path / "log.h5"
    _write_log(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "gradscope-log" and f.attrs["format_version"] == 2
        assert f.attrs["gradscope_version"] == gradscope.__version__
        assert json.loads(f.attrs["config"]) == CONFIG
        assert f["status"][()].decode().rstrip() == "completed"
        assert f["status"].dtype == np.dtype("S16")
        names = json.loads(f["committed"].attrs["names"])
        assert names == ["steps", "layers", "epochs", "probes", "probe_units", "snapshots"]
        c = f["committed"][()]
        assert zlib.crc32(c[:-1].tobytes()) == c[-1]
        rows, sealed, nblocks, nbytes, slot, _ = c[6 * 1:6 * 2]  # the layers table
        assert (rows, sealed, nblocks) == (15, 0, 0)  # 15 rows, all in the tail
        g = f["layers"]
        cols = [x[0] for x in json.loads(g.attrs["columns"])]
        B = int(g.attrs["block_rows"])
        step = g["tail/step"][slot * B:slot * B + rows]
        np.testing.assert_array_equal(step, np.repeat(np.arange(5), 3))
        assert zlib.crc32(step.tobytes()) == g["tail_crc"][slot][cols.index("step")]
        assert g["tail/grad_norm"].dtype == np.float64
        u = f["probe_units"]
        assert u["tail/dead_1"].shape[1:] == (5,) and u["tail/dead_1"].dtype == np.uint8
        np.testing.assert_allclose(u.attrs["hist_edges"], EDGES)
        assert "snapshots" not in f
        np.testing.assert_array_equal(f["params/initial/W_0"][()], _params()[0])
    # a sealed block, decoded by the documented steps
    path = tmp_path / "long.h5"
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9)
    n = 4096 + 7
    for t in range(n):
        w.append("steps", **_step_row(t))
        w.end_step()
    w.close("completed")
    with h5py.File(path, "r") as f:
        g = f["steps"]
        cols = [x[0] for x in json.loads(g.attrs["columns"])]
        entry = g["index"][0]
        B = int(g.attrs["block_rows"])
        assert entry[0] == 0 and entry[1] == B and g["index"].shape[0] == n // B
        assert zlib.crc32(entry[:-1].tobytes()) == entry[-1]
        data = g["data"][()].tobytes()
        for col, dt in (("step", np.int64), ("loss", np.float64), ("time", np.float64)):
            j = cols.index(col)
            off, nb, crc = entry[2 + 3 * j:5 + 3 * j]
            assert zlib.crc32(data[off:off + nb]) == crc
            got = _decode_doc(data[off:off + nb], dt, B)
            want = np.array([_step_row(t)[col] for t in range(B)], dtype=dt)
            np.testing.assert_array_equal(got, want)
    steps = read_steps(path)
    assert len(steps) == n
    np.testing.assert_array_equal(steps["loss"], [1.0 / (t + 1) for t in range(n)])


def test_status_values_and_message(tmp_path):
    w = LogWriter(tmp_path / "s.h5", CONFIG, _params(), EDGES)
    with pytest.raises(ValueError, match="status 'done'; accepted: running, completed"):
        w.set_status("done")
    w.close("diverged", "loss became nan at step 17 (epoch 0) " + "x" * 1000)
    st = read_status(tmp_path / "s.h5")
    assert st["status"] == "diverged" and st["last_step"] is None
    assert st["message"].startswith("loss became nan at step 17 (epoch 0) xxx")
    assert len(st["message"]) == 512  # S512
    # a log that did not finish has NaN final parameters
    assert all(np.isnan(W).all() for W, _ in read_weights(tmp_path / "s.h5", "final"))


# -- the committed-rows counter ----------------------------------------------------------------


def _killed_copy(path, dst):
    """What a SIGKILL at this instant would leave: the file's bytes as the OS has them."""
    shutil.copyfile(path, dst)
    return dst


def test_only_flushed_rows_are_visible(tmp_path):
    path = tmp_path / "live.h5"
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9)
    for t in range(3):
        w.append("steps", **_step_row(t))
        w.end_step()
    assert len(read_steps(_killed_copy(path, tmp_path / "k0.h5"))) == 0
    w.flush()
    for t in range(3, 6):
        w.append("steps", **_step_row(t))
        w.end_step()
    w.append("steps", **_step_row(6))  # a step still being recorded: never written
    k1 = _killed_copy(path, tmp_path / "k1.h5")
    assert list(read_steps(k1)["step"]) == [0, 1, 2]
    assert read_status(k1)["status"] == "running"
    assert all(np.isnan(W).all() for W, _ in read_weights(k1, "final"))
    w.flush()
    assert list(read_steps(_killed_copy(path, tmp_path / "k2.h5"))["step"]) == list(range(6))
    w.close("interrupted")  # the unfinished step 6 is dropped
    assert len(read_steps(path)) == 6


def _set_counter(path, part, rows, fix_crc=True, **fields):
    """Rewrite a version-2 log's counter for one part (rows, and its tail slot's rows)."""
    import zlib
    with h5py.File(path, "r+") as f:
        names = json.loads(f["committed"].attrs["names"])
        c = f["committed"][()]
        i = 6 * names.index(part)
        c[i] = rows
        for k, v in fields.items():
            c[i + ["rows", "sealed", "blocks", "data_bytes", "slot"].index(k)] = v
        if fix_crc:
            c[-1] = zlib.crc32(c[:-1].tobytes())
        f["committed"][...] = c


@pytest.mark.parametrize("n_first", [2, 4094, 4096])
def test_rows_written_after_the_counter_are_ignored(tmp_path, n_first):
    """A writer killed after writing rows (sealed blocks, a tail slot) but before its
    counter: readers see the rows of the last counter, all intact."""
    path = tmp_path / "c.h5"
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9)
    for t in range(n_first):
        w.append("steps", **_step_row(t))
        w.append("layers", 3, **_layer_rows(t))
        w.end_step()
    w.flush()
    w._write_counter = lambda: None  # from here the counter is never written again
    for t in range(n_first, n_first + 5):
        w.append("steps", **_step_row(t))
        w.append("layers", 3, **_layer_rows(t))
        w.end_step()
    w.flush()
    k = _killed_copy(path, tmp_path / "k.h5")
    w.close("completed")
    assert list(read_steps(k)["step"]) == list(range(n_first))
    layers = read_layers(k)
    assert list(layers["step"]) == list(np.repeat(np.arange(n_first), 3))
    np.testing.assert_array_equal(layers["grad_norm"].to_numpy()[-3:],
                                  _layer_rows(n_first - 1)["grad_norm"])


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_a_counter_changed_without_its_checksum_is_corrupted(tmp_path, reader):
    path = tmp_path / "c.h5"
    _write_log(path)
    _set_counter(path, "steps", 2, fix_crc=False)
    with pytest.raises(CorruptLogError, match="is corrupted: its row counter fails its checksum"):
        reader(path)
    # a counter past the data, even with a valid checksum: refused, never zeros
    _set_counter(path, "epochs", 99)
    with pytest.raises(CorruptLogError, match="counter of epochs is inconsistent|epochs rows"):
        read_epochs(path)


def test_v1_log_with_a_negative_counter_is_refused(tmp_path):
    v1 = tmp_path / "v1.h5"
    shutil.copyfile(V1_LOG, v1)
    with h5py.File(v1, "r+") as f:
        c = f["committed"][()]
        c[0] = -5
        f["committed"][...] = c
    for reader in READERS:
        with pytest.raises(CorruptLogError, match=r"row counter \[-5, "):
            reader(v1)


def test_full_block_and_flush_interval_commit_rows(tmp_path):
    path = tmp_path / "b.h5"
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9)
    for t in range(4095):
        w.append("steps", **_step_row(t))
        w.end_step()
    assert len(read_steps(_killed_copy(path, tmp_path / "k0.h5"))) == 0
    w.append("steps", **_step_row(4095))  # the 4096-row buffer is full: written and committed
    w.end_step()
    assert len(read_steps(_killed_copy(path, tmp_path / "k1.h5"))) == 4096
    w.close("completed")
    # time-based: a row appended a flush interval after the last flush is committed with it
    path2 = tmp_path / "t.h5"
    w = LogWriter(path2, CONFIG, _params(), EDGES, flush_interval=0.2)
    w.append("steps", **_step_row(0))
    w.end_step()
    time.sleep(0.25)
    w.append("steps", **_step_row(1))
    w.end_step()
    assert len(read_steps(_killed_copy(path2, tmp_path / "k2.h5"))) == 2
    w.close("completed")


def test_read_live_log_from_the_writing_process(tmp_path):
    path = tmp_path / "live.h5"
    w = LogWriter(path, CONFIG, _params(), EDGES, flush_interval=1e9)
    try:
        for t in range(3):
            w.append("steps", **_step_row(t))
            w.end_step()
        w.flush()
        for t in range(3, 5):
            w.append("steps", **_step_row(t))
            w.end_step()
        assert list(read_steps(path)["step"]) == [0, 1, 2]
        assert read_status(path)["status"] == "running"
    finally:
        w.close("completed")


def test_killed_file_tables_agree_deterministic(tmp_path, monkeypatch):
    # flush at every append; copy the file (= a SIGKILL) while the step's metrics are computed
    monkeypatch.setattr(train_mod, "LogWriter", functools.partial(LogWriter, flush_interval=0.0))
    out = tmp_path / "run.h5"
    copies = []
    real = train_mod.step_rows
    monkeypatch.setattr(train_mod, "ROW_BATCH", 1)  # a step's rows go to the log at once

    def spy(*args, **kwargs):
        copies.append(_killed_copy(out, tmp_path / f"kill{len(copies)}.h5"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "step_rows", spy)
    train(TrainConfig(dataset="moons", depth=2, width=8, steps=4), out)
    assert len(copies) == 4
    for c in copies:
        steps, layers = read_steps(c), read_layers(c)
        assert len(layers) == 3 * len(steps), (c.name, len(steps), len(layers))


def test_interrupted_file_tables_agree(tmp_path, monkeypatch):
    calls = []
    real = train_mod.step_rows
    monkeypatch.setattr(train_mod, "ROW_BATCH", 1)

    def sigterm_during_metrics(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what the SIGTERM handler raises, wherever it lands
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "step_rows", sigterm_during_metrics)
    out = tmp_path / "run.h5"
    r = train(TrainConfig(dataset="moons", depth=2, width=8, steps=10), out)
    assert r.status == "interrupted"
    assert len(read_layers(out)) == 3 * len(read_steps(out))


# -- files that are not readable logs ------------------------------------------------------------


def _bad_files(tmp_path):
    (tmp_path / "adir.h5").mkdir()
    (tmp_path / "text.h5").write_text("step,loss\n0,1.0\n")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.arange(3)
    with h5py.File(tmp_path / "future.h5", "w") as f:
        f.attrs["format"] = "gradscope-log"
        f.attrs["format_version"] = 99
    with h5py.File(tmp_path / "hollow.h5", "w") as f:
        f.attrs["format"] = "gradscope-log"
        f.attrs["format_version"] = 1
    return {
        "missing.h5": "does not exist",
        "adir.h5": "is a directory",
        "text.h5": "is not an HDF5 file",
        "plain.h5": "is an HDF5 file but not a gradscope log",
        "future.h5": "log format version 99; this gradscope reads up to 2",
        "hollow.h5": "is damaged or incomplete",
    }


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_bad_files_raise_one_line_log_error(tmp_path, reader):
    for name, message in _bad_files(tmp_path).items():
        with pytest.raises(LogError) as e:
            reader(tmp_path / name)
        text = str(e.value)
        assert message in text, (name, text)
        assert name in text and "\n" not in text


def test_truncated_log_is_refused_quickly(tmp_path):
    full = tmp_path / "full.h5"
    train(TrainConfig(dataset="moons", depth=2, width=8, steps=3000), full)
    data = full.read_bytes()
    code = (
        "import sys, gradscope\n"
        "from gradscope.reading.readers import LogError\n"
        "for p in sys.argv[1:]:\n"
        "    for fn in (gradscope.read_status, gradscope.read_layers):\n"
        "        try:\n"
        "            fn(p)\n"
        "        except LogError as e:\n"
        "            print('LogError', p, e)\n"
        "        else:\n"
        "            print('read', p)\n"
    )
    paths = []
    for frac in (0.1, 0.5):
        p = tmp_path / f"cut{frac}.h5"
        p.write_bytes(data[: int(len(data) * frac)])
        paths.append(str(p))
    try:
        done = subprocess.run([sys.executable, "-c", code, *paths], check=False,
                              capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a truncated log hangs")
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("LogError") for line in lines), done.stdout


# -- live runs in a subprocess: reading, SIGKILL, SIGTERM ---------------------------------------


def _start(out):
    # --probe-every 500: blocks are committed by the 1 s timer (the per-unit buffer of 16
    # probe rows fills only every 8000 steps)
    cmd = [GRADSCOPE, "train", "--dataset", "moons", "--depth", "2", "--width", "8",
           "--steps", "200000", "--probe-every", "500", "-q", "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(out):
    try:
        return len(read_steps(out))
    except LogError:
        return 0


def _wait_for_rows(proc, out, timeout=60.0):
    end = time.time() + timeout
    while not out.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "the run never created its log"
        time.sleep(0.05)
    time.sleep(0.3)  # let the writer create every object and switch SWMR on
    while _rows(out) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "no rows were committed"
        time.sleep(0.05)


def _watch(out, seconds):
    """Poll the live log; (time after the read, rows seen, status) observations."""
    obs = []
    end = time.time() + seconds
    while time.time() < end:
        n = len(read_steps(out))
        obs.append((time.time(), n, read_status(out)["status"]))
        time.sleep(0.1)
    return obs


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    rng = np.random.default_rng()
    runs = []
    for i in range(3):
        out = tmp_path_factory.mktemp("kill") / f"run{i}.h5"
        proc = _start(out)
        try:
            _wait_for_rows(proc, out)
            delay = float(rng.uniform(2.5, 4.0))
            obs = _watch(out, delay)
            t_kill = time.time()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            _stop(proc)
        runs.append({"path": out, "obs": obs, "t_kill": t_kill, "delay": delay,
                     "returncode": proc.returncode})
    return runs


def test_sigkill_leaves_a_log_every_reader_opens(killed_runs):
    for run in killed_runs:
        path, obs, where = run["path"], run["obs"], f"{run['path'].name} delay {run['delay']:.2f}"
        assert run["returncode"] == -signal.SIGKILL
        st = read_status(path)
        assert (st["status"], st["message"]) == ("running", ""), where
        assert read_config(path)["depth"] == 2
        steps = read_steps(path)
        n = len(steps)
        np.testing.assert_array_equal(steps["step"], np.arange(n))
        assert np.isfinite(steps["loss"]).all()
        # every row a reader saw before the kill survived it ...
        assert n >= max(o[1] for o in obs), where
        # ... and rows kept being committed until shortly before it (flushes at least every 1 s)
        early = [o[1] for o in obs if o[0] <= run["t_kill"] - 2.0]
        assert early and n > early[-1], (where, early[-1:], n)
        layers = read_layers(path)
        assert len(layers) % 3 == 0
        per_step = layers.groupby("step")["layer"].apply(sorted)
        assert all(v == [0, 1, 2] for v in per_step)
        layer_steps = per_step.index.to_numpy()
        np.testing.assert_array_equal(layer_steps, np.arange(len(layer_steps)))
        assert 0 <= n - len(layer_steps) <= 1, where
        ep = read_epochs(path)
        np.testing.assert_array_equal(ep["epoch"], np.arange(len(ep)))
        np.testing.assert_array_equal(ep["step"], 25 * (ep["epoch"] + 1))  # 800 rows / 32
        assert len(ep) == 0 or ep["step"].iloc[-1] <= n
        psteps, dead = read_dead_units(path)
        assert len(psteps) >= 1 and (psteps % 500 == 0).all() and psteps[-1] < n
        assert [d.shape[1] for d in dead] == [8, 8]
        hist = read_histograms(path)
        assert set(hist["step"]) == set(psteps)
        assert (hist.groupby(["step", "layer"])["count"].sum() == 800 * 8).all()
        assert all(np.isfinite(W).all() for W, _ in read_weights(path, 0))
        assert all(np.isnan(W).all() for W, _ in read_weights(path, "final"))


def test_sigkill_leaves_tables_that_agree(killed_runs):
    for run in killed_runs:
        path = run["path"]
        steps, layers = read_steps(path), read_layers(path)
        assert len(layers) == 3 * len(steps), (path.name, len(steps), len(layers))
        assert set(layers["step"]) == set(steps["step"])
        psteps, _ = read_dead_units(path)
        probed = layers.dropna(subset=["probe_act_mean"])["step"].unique()
        np.testing.assert_array_equal(np.sort(probed), psteps)


def test_live_reading_and_sigterm(tmp_path):
    out = tmp_path / "live.h5"
    proc = _start(out)
    try:
        _wait_for_rows(proc, out)
        obs = _watch(out, 2.5)
        # the live log grows while the run goes on, and every reader works on it
        assert all(o[2] == "running" for o in obs)
        counts = [o[1] for o in obs]
        assert counts == sorted(counts) and counts[-1] > counts[0]
        live_layers = read_layers(out)
        assert len(live_layers) >= 3 * (counts[-1] - 1)
        assert all(np.isnan(W).all() for W, _ in read_weights(out, "final"))
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert re.search(r"interrupted at step \d+ \(epoch \d+\); the log holds every step", stderr)
    assert stdout.strip() == str(out)
    st = read_status(out)
    assert st["status"] == "interrupted"
    assert re.fullmatch(r"interrupted at step \d+ \(epoch \d+\)", st["message"])
    steps = read_steps(out)
    assert len(steps) >= counts[-1]
    np.testing.assert_array_equal(steps["step"], np.arange(len(steps)))
    stopped_at = int(re.search(r"step (\d+)", st["message"]).group(1))
    assert steps["step"].iloc[-1] in (stopped_at - 1, stopped_at)
    assert all(np.isfinite(W).all() for W, _ in read_weights(out, "final"))


def test_v1_log_still_opens_and_reads_what_it_holds(tmp_path):
    """tests/data/log_v1.h5 was written by the version-1 writer; every reader opens it and
    returns the committed rows exactly as h5py reads them."""
    v1 = tmp_path / "v1.h5"
    shutil.copyfile(V1_LOG, v1)
    with h5py.File(v1, "r") as f:
        assert f.attrs["format_version"] == 1
        names = json.loads(f["committed"].attrs["names"])
        n = dict(zip(names, f["committed"][()].tolist()))
        raw_loss = f["steps/loss"][: n["steps"]]
        raw_gn = f["layers/grad_norm"][: n["layers"]]
        raw_dead = f["probe_units/dead_0"][: n["probe_units"]]
        raw_w = f["snapshots/W_1"][1]
        raw_final = f["params/final/W_0"][()]
    assert read_status(v1)["status"] == "completed"
    np.testing.assert_array_equal(read_steps(v1)["loss"], raw_loss)
    np.testing.assert_array_equal(read_layers(v1)["grad_norm"], raw_gn)
    np.testing.assert_array_equal(read_dead_units(v1)[1][0], raw_dead.astype(bool))
    np.testing.assert_array_equal(read_weights(v1, 20)[1][0], raw_w)
    np.testing.assert_array_equal(read_weights(v1, "final")[0][0], raw_final)
    assert len(read_histograms(v1)) and read_config(v1)["dataset"] == "moons"
    assert len(read_epochs(v1)) == 1
