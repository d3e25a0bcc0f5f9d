"""The reading layer: selections read without the rest, one-open run loading, bounded reads
of long logs, and the fallbacks for logs written before the config held what views need."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradscope
from gradscope import TrainConfig, train
from gradscope.reading import binned, readers, run
from gradscope.record.schema import LogError


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("reading") / "relu.h5"
    train(TrainConfig(dataset="moons", depth=3, width=8, steps=300, probe_every=10), path)
    return path


@pytest.fixture(scope="module")
def diverged(log, tmp_path_factory):
    """The log with a few non-finite losses and gradient norms written into its rows."""
    from logtools import rewrite

    def edit(t):
        t["steps"].loc[17, "loss"] = np.nan
        t["steps"].loc[233, "grad_norm_total"] = np.inf

    return rewrite(log, tmp_path_factory.mktemp("reading") / "bad.h5", edit)


#: a log written by the version-1 writer (40 steps, 3 layers, probes every 10 steps)
V1_LOG = Path(__file__).parent / "data" / "log_v1.h5"


def _where(full, steps):
    return full[full["step"].isin(steps)].reset_index(drop=True)


@pytest.mark.parametrize("fmt", ["v2", "v1"])
@pytest.mark.parametrize("long_range", [False, True])
def test_layer_selections_equal_the_filtered_table(log, monkeypatch, long_range, fmt):
    if long_range:  # the path of a long log: positions from the writer's order
        monkeypatch.setattr(readers, "STEP_COLUMN_ROWS", 10)
    log = log if fmt == "v2" else V1_LOG
    full = gradscope.read_layers(log)
    steps = np.unique(full["step"])
    assert len(steps) > 30 and full["dead_frac"].notna().any()
    a, b = steps[len(steps) // 6], steps[len(steps) // 2]
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=(a, b)),
                                  _where(full, steps[(steps >= a) & (steps <= b)]))
    pd.testing.assert_frame_equal(gradscope.read_layers(log, every=7), _where(full, steps[::7]))
    inner = steps[(steps >= 10) & (steps <= 200)]
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=(10, 200), every=3),
                                  _where(full, inner[::3]))
    last = int(steps[-1])
    got = gradscope.read_layers(log, steps=[3, 10, last, 5000], columns=["delta_norm", "dead_frac"])
    pd.testing.assert_frame_equal(
        got, _where(full, [3, 10, last])[["step", "layer", "delta_norm", "dead_frac"]])
    got = gradscope.read_layers(log, steps=(5, last + 100), every=4, columns=["epoch"])
    pd.testing.assert_frame_equal(got, _where(full, steps[steps >= 5][::4])[["step", "layer",
                                                                            "epoch"]])


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_selections_outside_the_logged_steps(log, fmt):
    """Ranges before, after or around the logged steps, an empty or reversed range, and
    ``every`` beyond the number of steps: what filtering the full table gives."""
    log = log if fmt == "v2" else V1_LOG
    full = gradscope.read_layers(log)
    steps = np.unique(full["step"])
    last = int(steps[-1])
    for sel, keep in [((last + 1, last + 50), []), ((-50, -1), []), ((-50, 0), [0]),
                      ((20, 5), []), ((last, 10 ** 12), [last]), ([-3, last + 7], [])]:
        pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=sel), _where(full, keep))
    for every in (len(steps), len(steps) + 1, 10 ** 30):
        pd.testing.assert_frame_equal(gradscope.read_layers(log, every=every),
                                      _where(full, steps[:1]))
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=(7, 10 ** 9), every=10 ** 6),
                                  _where(full, steps[steps >= 7][:1]))
    empty = gradscope.read_layers(log, steps=(last + 1, last + 2), every=2)
    assert list(empty.columns) == list(full.columns) and len(empty) == 0
    assert (empty.dtypes == full.dtypes).all()


def test_bad_selections_name_what_is_accepted(log):
    with pytest.raises(ValueError, match="^unknown column 'nope'; accepted: step, layer"):
        gradscope.read_layers(log, columns=["nope"])
    with pytest.raises(ValueError, match="^every=0; accepted: a whole number >= 1"):
        gradscope.read_layers(log, every=0)


@pytest.mark.parametrize("kw", [
    {"steps": (10, None)}, {"steps": ("a", "b")}, {"steps": [1.5]}, {"steps": 5.5},
    {"steps": "abc"}, {"steps": [[1, 2]]}, {"every": True}, {"every": 2.5}, {"every": "3"},
    {"columns": ["grad_norm", 3]},
])
def test_a_bad_selection_is_not_called_a_damaged_log(log, kw):
    """A bad argument is the caller's, said in one line naming it; it was reported as
    'damaged or incomplete' (the log blamed), or a float step silently chose another step."""
    name = next(iter(kw))
    with pytest.raises(ValueError) as err:
        gradscope.read_layers(log, **kw)
    msg = str(err.value)
    assert not isinstance(err.value, LogError), msg
    assert "accepted:" in msg and "\n" not in msg and "damaged" not in msg
    assert msg.startswith(f"{name}=") or msg.startswith("unknown column")


@pytest.mark.parametrize("kw", [{"max_steps": 2}, {"max_steps": 10.5}, {"per_bin": 0},
                                {"max_steps": 10, "per_bin": -1}])
def test_bad_bins_are_the_callers_not_the_logs(log, kw):
    for fn in (run.read_run, binned.read_layers_binned):
        with pytest.raises(ValueError, match=r"^(max_steps|per_bin)=.*; accepted: a whole "
                                             r"number >= \d$") as err:
            fn(log, **kw)
        assert not isinstance(err.value, LogError)


def test_a_float_step_list_equal_to_whole_steps_is_accepted(log):
    full = gradscope.read_layers(log)
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=[3.0, 10.0]),
                                  _where(full, [3, 10]))
    pd.testing.assert_frame_equal(gradscope.read_layers(log, steps=np.array([10, 3, 3])),
                                  _where(full, [3, 10]))


def test_read_run_of_a_short_log_holds_the_readers_tables(log):
    r = run.read_run(log)
    pd.testing.assert_frame_equal(r.steps, gradscope.read_steps(log))
    pd.testing.assert_frame_equal(r.epochs, gradscope.read_epochs(log))
    pd.testing.assert_frame_equal(r.diagnosis_layers, gradscope.read_layers(log))
    assert r.config == gradscope.read_config(log) and r.status == gradscope.read_status(log)
    assert r.relu_family and r.layer_rows == len(gradscope.read_layers(log))
    # histograms at the first and the last probe step, as read_histograms has them
    h = gradscope.read_histograms(log)
    first, last = h["step"].min(), h["step"].max()
    pd.testing.assert_frame_equal(
        r.hist.reset_index(drop=True),
        h[h["step"].isin([first, last])].sort_values(["layer", "step"], kind="stable")
        .reset_index(drop=True), check_dtype=False)


def test_long_tables_are_read_as_windows_that_keep_every_non_finite_step(diverged, monkeypatch):
    monkeypatch.setattr(run, "FULL_TABLE_ROWS", 40)
    monkeypatch.setattr(run, "_WINDOWS", 4)
    full = gradscope.read_steps(diverged)
    assert len(full) > 40
    r = run.read_run(diverged)
    bad = full[~np.isfinite(full["loss"]) | ~np.isfinite(full["grad_norm_total"])]
    assert len(bad) and set(bad["step"]) <= set(r.steps["step"])
    assert r.steps["step"].iloc[-1] == full["step"].iloc[-1]
    assert len(r.steps) < len(full) and r.logged_steps == len(full)
    # every row read is the log's row for that step
    pd.testing.assert_frame_equal(r.steps.reset_index(drop=True),
                                  _where(full, r.steps["step"]))


def test_long_probe_table_windows_hold_whole_steps(log, monkeypatch):
    monkeypatch.setattr(run, "FULL_TABLE_ROWS", 40)
    monkeypatch.setattr(run, "_WINDOWS", 3)
    r = run.read_run(log)
    per_step = r.probes.groupby("step").size()
    assert len(per_step) > 1 and (per_step == 4).all()  # 3 hidden layers + output


def test_views_fall_back_by_name_for_logs_without_the_new_config_keys():
    assert run.is_relu_family({"activation": "leaky_relu"})
    assert not run.is_relu_family({"activation": "tanh"})
    assert not run.is_relu_family({"activation": "relu", "relu_family": False})
    old = run.train_options({"activation": "relu"})
    from gradscope.training.loop import TRAIN_OPTIONS

    assert old == TRAIN_OPTIONS  # the options of a format-1 log are today's
    assert run.train_options({"train_options": ["depth"]}) == ["depth"]


# -- binned windows against the definition ---------------------------------------------------
def _binned_by_definition(full, max_steps, per_bin):
    """read_layers_binned as its docstring defines it, from the full table: the first and the
    last logged step alone, bins of q = ceil((k - 2) / (max_steps - 2)) logged steps between
    (the last shorter), each the NaN-ignoring median over min(per_bin, q) steps at its centre;
    probe columns: medians of the probe rows from the bin's first step to the next bin's."""
    probe_cols = ("dead_frac", "probe_act_mean", "probe_act_std", "probe_saturated_frac")
    steps = np.unique(full["step"])
    k, layers = len(steps), np.unique(full["layer"])
    assert len(full) == k * len(layers)  # one row per logged step and layer, in that order
    grid = {c: full[c].to_numpy(float).reshape(k, len(layers)) for c in full.columns}
    q = -(-(k - 2) // (max_steps - 2))
    starts = [0, *range(1, k - 1, q), k - 1]
    ends = [*starts[1:], k]
    out = {c: [] for c in ["step", "layer", *full.columns.drop(["step", "layer", "epoch"]),
                           "epoch", "step_lo", "step_hi"]}
    for a, e in zip(starts, ends):
        width = e - a
        w = min(per_bin, width)
        mid = a + width // 2
        for c in full.columns.drop(["step", "layer", "epoch"]):
            # probe columns: every logged step of the bin; the others: the window
            v = grid[c][a:e] if c in probe_cols else grid[c][a + (width - w) // 2:][:w]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: NaN
                out[c].extend(np.nanmedian(v, axis=0))
        out["step"].extend([steps[mid]] * len(layers))
        out["layer"].extend(layers)
        out["epoch"].extend(grid["epoch"][mid])
        out["step_lo"].extend([steps[a]] * len(layers))
        out["step_hi"].extend([steps[e - 1]] * len(layers))
    return pd.DataFrame(out)


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_binned_windows_equal_their_definition(log, fmt):
    log = log if fmt == "v2" else V1_LOG
    full = gradscope.read_layers(log)
    k = full["step"].nunique()
    for max_steps, per_bin in [(3, 1), (4, 2), (10, 2), (10, 32), (k - 1, 1), (k - 2, 3)]:
        got = binned.read_layers_binned(log, max_steps=max_steps, per_bin=per_bin)
        want = _binned_by_definition(full, max_steps, per_bin)[list(got.columns)]
        assert got["step"].nunique() <= max_steps
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)
    whole = binned.read_layers_binned(log, max_steps=k)  # short enough: the table itself
    pd.testing.assert_frame_equal(whole.drop(columns=["step_lo", "step_hi"]), full)


# -- a live log: the writer goes on while a reader reads --------------------------------------
_WRITER = r"""
import sys
import numpy as np
from gradscope.record.schema import LAYER_COLUMNS
from gradscope.record.blocks import crc
from gradscope.record.writer import LogWriter, status_crc
w = LogWriter(sys.argv[1], {"dataset": "toy"}, [np.ones((2, 3)), np.zeros(3), np.ones((3, 1)),
              np.zeros(1)], np.linspace(0, 1, 4), flush_interval=1e9)
t = 0
print("ready", flush=True)
for line in sys.stdin:  # "N": log N more steps and flush; "end": close
    if line.strip() == "end":
        w.close("completed")
        break
    if line.startswith("status"):  # what set_status does, stopped before its counter
        w.f["status"][()] = np.bytes_(line.split()[1].ljust(16))
        w.f.flush()
        print(0, flush=True)
        continue
    if line.startswith("params"):  # what close does: the final arrays, then their checksums
        g = w.f["params/final"]
        for k in g:
            g[k][...] = 2.0
        w.f.flush()
        print(0, flush=True)
        continue
    if line.startswith("crcs"):
        crcs = w._params_crc[1]
        for i, k in enumerate(w._array_names):
            crcs[i] = crc(np.ascontiguousarray(w.f["params/final"][k][()]))
        w._params_crc[1] = crcs
        w.f.flush()
        print(0, flush=True)
        continue
    if line.startswith("counter"):  # ... and the counter that holds the status's checksum
        w._status_crc = status_crc(w.f["status"][()], w.f["status_message"][()])
        w.flush()
        print(0, flush=True)
        continue
    for _ in range(int(line)):
        w.append("steps", step=t, epoch=0, loss=1.0 / (t + 1), accuracy=0.5, lr=0.1,
                 grad_norm_total=float(t), time=float(t))
        w.append("layers", 2, step=t, layer=np.arange(2), **{
            c: float(t) + 0.25 * np.arange(2) for c in LAYER_COLUMNS if c not in ("step", "layer")})
        w.end_step()
        t += 1
    w.flush()
    print(t, flush=True)
"""


@pytest.fixture
def live_writer(tmp_path):
    """A writer in another process that logs and flushes steps when told: ``tell(n)``."""
    import os
    import subprocess
    import sys

    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(gradscope.__file__).parents[1])})
    assert proc.stdout.readline().strip() == "ready"

    def tell(n):  # a number of steps, or "status S" then "counter"
        proc.stdin.write(f"{n}\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())

    yield path, tell
    proc.stdin.write("end\n")
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("later", [(5, 5), (1024, 1024), (1034, 3)])
def test_a_read_that_outlasts_two_flushes_of_a_live_log_reads_what_was_committed(
        live_writer, later):
    """The writer writes a tail slot again once the counter names the other one. A reader
    still holding the older counter read the slot as it was then: a healthy live log was
    called corrupted, or (when the newer rows in that slot were as many) rows 2048.. were
    returned as rows 0..9, silently."""
    path, tell = live_writer
    assert tell(10) == 10
    with readers.open_log(path) as f:
        assert readers.table_length(f, "steps") == 10
        for n in later:  # two flushes (or more rows sealed) while the reader holds its counter
            tell(n)
        steps = readers.read_table(f, "steps")
        layers = readers.read_table(f, "layers")
    assert steps["step"].tolist() == list(range(10))
    np.testing.assert_array_equal(steps["loss"], 1.0 / (np.arange(10) + 1))
    assert layers["step"].tolist() == list(np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(layers["grad_norm"],
                                  np.repeat(np.arange(10.0), 2) + np.tile([0, 0.25], 10))
    # a new open sees everything committed since
    total = 10 + sum(later)
    assert gradscope.read_steps(path)["step"].tolist() == list(range(total))


def _read_while(read, act) -> dict:
    """Start ``read()`` in a thread, ``act()`` while it waits, and return ``{"value"}`` or
    ``{"error"}``."""
    import threading

    got = {}

    def run():
        try:
            got["value"] = read()
        except Exception as e:  # noqa: BLE001 -- what the test looks at
            got["error"] = e

    reader = threading.Thread(target=run)
    reader.start()
    time.sleep(0.15)
    act()
    reader.join(10)
    return got


def test_a_live_log_read_between_its_status_and_its_counter_is_read_again(live_writer,
                                                                          monkeypatch):
    """The writer writes the status, then the counter holding its checksum: a reader that
    came between the two called the live log corrupted ('its status fails its checksum')."""

    monkeypatch.setattr(readers, "LIVE_RETRY_SLEEP", 0.1, raising=False)  # 2 s for the writer to go on
    path, tell = live_writer
    tell(3)
    tell("status interrupted")
    got = _read_while(lambda: gradscope.read_status(path), lambda: tell("counter"))
    assert "error" not in got, got.get("error")
    assert got["value"]["status"] == "interrupted" and got["value"]["last_step"] == 2


def test_final_parameters_read_between_the_arrays_and_their_checksums_are_read_again(
        live_writer, monkeypatch):

    monkeypatch.setattr(readers, "LIVE_RETRY_SLEEP", 0.1, raising=False)
    path, tell = live_writer
    tell(2)
    assert np.isnan(gradscope.read_weights(path, "final")[0][0]).all()  # not written yet
    tell("params")
    got = _read_while(lambda: gradscope.read_weights(path, "final"), lambda: tell("crcs"))
    assert "error" not in got, got.get("error")
    assert all((W == 2.0).all() and (b == 2.0).all() for W, b in got["value"])


# -- a version-1 log with many probe steps ----------------------------------------------------
def test_a_v1_log_with_many_probe_steps_reads_sparse_rows_of_per_unit_arrays(tmp_path):
    """Sparse rows of a (rows, width) dataset of a version-1 log (the run's dead flags at 400
    spread probe steps, the histograms at the first and last) were read as one-dimensional
    hyperslabs: 'damaged or incomplete: start must be a tuple of size 2'."""
    import shutil

    import h5py

    path = tmp_path / "v1long.h5"
    shutil.copyfile(V1_LOG, path)
    n = 5000  # beyond the dense read (4 * rows + 4096)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r+") as f:
        g = f["probe_units"]
        for k in g:
            g[k].resize((n, *g[k].shape[1:]))
            g[k][...] = (np.arange(n) * 10 if k == "step" else
                         rng.integers(0, 2 if k.startswith("dead") else 50, g[k].shape))
        c = f["committed"][()]
        c[json.loads(f["committed"].attrs["names"]).index("probe_units")] = n
        f["committed"][...] = c
        want = {k: g[k][()] for k in g}
    rows = [0, 7, 4093, n - 1]
    with readers.open_log(path) as f:
        got = readers.read_columns(f, "probe_units", ["step", "hist_0", "dead_1"], rows)
        spread = readers.read_columns(f, "probe_units", ["hist_1"], list(range(0, n, 97)))
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k][rows])
    np.testing.assert_array_equal(spread["hist_1"], want["hist_1"][::97])
    r = run.read_run(path)
    first, last = r.hist[r.hist["step"] == 0], r.hist[r.hist["step"] == 10 * (n - 1)]
    np.testing.assert_array_equal(first[first["layer"] == 0]["count"], want["hist_0"][0])
    np.testing.assert_array_equal(last[last["layer"] == 1]["count"], want["hist_1"][n - 1])
    cols = np.unique(np.linspace(0, n - 1, 400).round().astype(int))
    np.testing.assert_array_equal(r.dead_steps, want["step"][cols])
    np.testing.assert_array_equal(r.dead[1], want["dead_1"][cols].astype(bool))


# -- empty, single-step, killed and live logs through every new path ---------------------------
def _first_steps(k):
    def edit(t):
        keep = sorted(t["steps"]["step"])[:k]
        for name, df in t.items():
            t[name] = df[df["step"].isin(keep)].reset_index(drop=True)
    return edit


@pytest.fixture(scope="module")
def edge_logs(log, tmp_path_factory):
    from logtools import rewrite

    d = tmp_path_factory.mktemp("edges")
    return {
        "single": rewrite(log, d / "single.h5", _first_steps(1)),
        "killed": rewrite(log, d / "killed.h5", _first_steps(60), status="running"),
        "killed_single": rewrite(log, d / "killed1.h5", _first_steps(1), status="running"),
        "empty_killed": rewrite(log, d / "empty_killed.h5", _first_steps(0), status="running"),
        "empty_failed": rewrite(log, d / "empty_failed.h5", _first_steps(0), status="failed",
                                message="MemoryError: out of memory"),
    }


def _check_every_path(path, n_steps):
    full = gradscope.read_layers(path)
    steps = np.unique(full["step"])
    assert len(steps) == n_steps and len(gradscope.read_steps(path)) == n_steps
    for sel in [(0, 5), (10 ** 6, 10 ** 7), [0, 10 ** 6]]:
        keep = (steps[(steps >= sel[0]) & (steps <= sel[1])] if isinstance(sel, tuple)
                else steps[np.isin(steps, sel)])
        pd.testing.assert_frame_equal(gradscope.read_layers(path, steps=sel), _where(full, keep))
    pd.testing.assert_frame_equal(gradscope.read_layers(path, every=10 ** 6), _where(full, steps[:1]))
    b = binned.read_layers_binned(path, max_steps=3, per_bin=1)
    if n_steps <= 3:
        pd.testing.assert_frame_equal(b.drop(columns=["step_lo", "step_hi"]), full)
    else:
        want = _binned_by_definition(full, 3, 1)[list(b.columns)]
        pd.testing.assert_frame_equal(b, want, check_dtype=False, rtol=1e-12)
    for figures in (True, False):
        r = run.read_run(path, figures=figures)
        pd.testing.assert_frame_equal(r.steps, gradscope.read_steps(path))
        pd.testing.assert_frame_equal(r.diagnosis_layers, full)
        assert r.status == gradscope.read_status(path) and r.logged_steps == n_steps
    r = run.read_run(path)
    h = gradscope.read_histograms(path)
    assert set(r.hist["step"]) == ({h["step"].min(), h["step"].max()} if len(h) else set())
    return gradscope.diagnose(path)


@pytest.mark.parametrize("name,n_steps,status,verdicts", [
    ("single", 1, "completed", ("not_learning", "no_data")),
    ("killed", 60, "running", ("healthy", "warning", "not_learning")),
    ("killed_single", 1, "running", ("not_learning", "no_data")),
    ("empty_killed", 0, "running", ("no_data",)),
    ("empty_failed", 0, "failed", ("failed",)),
])
def test_edge_logs_through_every_new_path(edge_logs, name, n_steps, status, verdicts):
    path = edge_logs[name]
    d = _check_every_path(path, n_steps)
    assert gradscope.read_status(path)["status"] == status
    assert d.verdict in verdicts and d.live == (status == "running")


def test_a_live_log_with_no_step_yet_and_with_steps(log, tmp_path):
    """A writer still open (its lock held): before its first committed step, then after."""
    from gradscope.reading.readers import columns_of, open_log, read_table
    from gradscope.record.writer import LogWriter

    with open_log(log) as f:
        config = json.loads(f.attrs["config"])
        edges = np.asarray(f["probe_units"].attrs["hist_edges"])
        widths = [columns_of(f, "probe_units")[f"dead_{l}"][1][0] for l in range(3)]
        tables = {t: read_table(f, t) for t in ("steps", "layers", "probes")}
    init = [a for pair in gradscope.read_weights(log, 0) for a in pair]
    path = tmp_path / "live.h5"
    w = LogWriter(path, config, init, edges, widths=widths, flush_interval=1e9)
    try:
        w.flush()
        d = _check_every_path(path, 0)
        assert d.verdict == "no_data" and d.live
        for s in range(20):
            for t, df in tables.items():
                rows = df[df["step"] == s]
                if len(rows):
                    w.append(t, len(rows), **{c: rows[c].to_numpy() for c in rows.columns})
            w.end_step()
        w.flush()
        _check_every_path(path, 20)
        pd.testing.assert_frame_equal(gradscope.read_layers(path, columns=["grad_norm"]),
                                      _where(gradscope.read_layers(log), range(20))[
                                          ["step", "layer", "grad_norm"]])
    finally:
        w.close("completed")


def test_a_format_2_log_of_the_previous_release_reads_the_same_numbers():
    """tests/data/log_v2.h5 was written by the release before this writer (commit 84d92a6,
    a 3 x 8 tanh net, Adam, 120 steps of digits), and log_v2_values.npz holds what that
    release's readers returned from it: this code must read every value identically."""
    from gradscope import read_epochs, read_layers, read_steps, read_weights

    data = Path(__file__).parent / "data"
    path = data / "log_v2.h5"
    want = np.load(data / "log_v2_values.npz")
    got = {"steps": read_steps(path), "layers": read_layers(path), "epochs": read_epochs(path)}
    final = read_weights(path, "final")
    names = set()
    for key in want.files:
        table, col = key.split("/")
        names.add(key)
        if table == "final":
            W, b = final[int(col[1:])]
            have = W if col[0] == "W" else b
        else:
            have = got[table][col].to_numpy()
        np.testing.assert_array_equal(have, want[key], err_msg=key)
    # nothing the old release returned is missing, and nothing new appears in its tables
    for table, df in got.items():
        assert {f"{table}/{c}" for c in df.columns} == {k for k in names
                                                        if k.startswith(table + "/")}
    assert len(got["steps"]) == 120 and len(got["layers"]) == 120 * 4
