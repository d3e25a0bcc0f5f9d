"""gradscope sweep: value lists, the grid, local and Dask runs, resuming, the command."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradscope.cli.sweep import sweep
from gradscope.reading.readers import read_epochs, read_status, read_steps
from gradscope.training.loop import ConfigError, TrainConfig, train
from gradscope.training.sweep import (
    GRID_FILE,
    PARTIAL_DIR,
    SUMMARY_FILE,
    SweepError,
    expand_grid,
    option_kinds,
    parse_list,
    run_name,
    run_names,
    run_sweep,
    summarize,
)

TINY = {"dataset": "moons", "width": 8, "steps": 30}
VERDICTS = ["not_learning", "vanishing", "exploding", "dead_units", "saturated", "diverged",
            "stalled_updates", "verdict", "causes"]


def _grid(**options):
    return expand_grid({**TINY, **options})


def _fingerprint(path: Path):
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest()


# -- value lists ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, expected", [
    ("2:32:x2", int, [2, 4, 8, 16, 32]),
    ("2:10:+2", int, [2, 4, 6, 8, 10]),
    ("2:9:+2", int, [2, 4, 6, 8]),
    ("1:4", int, [1, 2, 3, 4]),
    ("1,2:8:x2", "depth", [1, 2, 4, 8]),
    ("1e-3:1e-1:x10", float, [0.001, 0.01, 0.1]),
    ("0.1:0.5:+0.1", "lr", [0.1, 0.2, 0.3, 0.4, 0.5]),
    ("relu, tanh,sigmoid", "activation", ["relu", "tanh", "sigmoid"]),
    ("0,1,2", "seeds", [0, 1, 2]),
    ("16,full", "batch_size", [16, "full"]),
    ("default,1e-2", "lr", [None, 0.01]),
    ("64,64/128,32", "widths", [[64, 64], [128, 32]]),
    ("true,false", "standardize", [True, False]),
    ("7", "depth", [7]),
])
def test_parse_list(text, kind, expected):
    assert parse_list(text, kind) == expected


@pytest.mark.parametrize("text, kind, words", [
    ("2:x", int, "bad range"),
    ("2:10:x1", int, "FACTOR > 1"),
    ("0:16:x2", int, "START > 0"),
    ("10:2:+1", int, "above STOP"),
    ("2:10:-1", int, r"must start with \+ or x"),
    ("1:10:x1.5", int, "not a whole number"),
    ("0.1:1", float, "give a step"),
    ("2,,4", int, "empty item"),
    ("two", "depth", "not a whole number"),
    ("1.5", "depth", "not a whole number"),
    ("2,4,2", "depth", "lists 2 twice"),
    ("maybe", "standardize", "not true or false"),
    ("1e-3:x", "lr", "bad range"),
    ("0:1000000:+1", int, "more than"),
])
def test_parse_list_refuses(text, kind, words):
    with pytest.raises(SweepError, match=words) as e:
        parse_list(text, kind, option="--opt")
    assert "\n" not in str(e.value) and "--opt" in str(e.value)


def test_options_follow_train_config():
    kinds = option_kinds()
    from dataclasses import fields

    assert list(kinds) == [f.name for f in fields(TrainConfig) if f.name != "extra"]
    assert kinds["lr"].optional and kinds["batch_size"].also_str and kinds["widths"].is_list


# -- the grid and names -----------------------------------------------------------------------
def test_expand_grid_product_and_unique_names():
    configs = expand_grid({
        "depth": parse_list("2:16:x2", int), "activation": ["sigmoid", "tanh", "relu"],
        "init": ["standard", "xavier", "he"], "optimizer": ["sgd", "adam"],
        "seeds": [0, 1, 2], "dataset": "moons", "steps": 30,
    })
    assert len(configs) == 4 * 3 * 3 * 2 * 3
    for c in configs:
        c.check()
    names = run_names(configs)
    assert len(set(names)) == len(names)
    assert all("steps30" in n and n.startswith("moons-d") for n in names)
    # the last option varies fastest
    assert [c.seed for c in configs[:3]] == [0, 1, 2]


def test_optimizer_options_apply_to_the_optimizers_that_take_them():
    configs = expand_grid({"optimizer": ["sgd", "adam", "rmsprop"], "beta1": [0.8, 0.9],
                           "momentum": [0.5], "dataset": "moons", "steps": 5})
    # beta1: Adam's only (SGD and RMSprop once each, not twice); momentum: SGD's and
    # RMSprop's, not Adam's
    got = [(c.optimizer, c.beta1, c.momentum) for c in configs]
    assert got == [("sgd", None, 0.5), ("adam", 0.8, None), ("adam", 0.9, None),
                   ("rmsprop", None, 0.5)]
    for c in configs:
        c.check()
    # an option no optimizer of the grid takes is still refused, by the optimizer's check
    (c,) = expand_grid({"optimizer": ["sgd"], "beta1": [0.8], "dataset": "moons"})
    with pytest.raises(ConfigError, match="sgd does not take 'beta1'"):
        c.check()


def test_run_names_cover_every_option_and_stay_stable():
    base = TrainConfig(dataset="moons")
    assert run_name(base) == base.name()  # nothing but the defaults: as `gradscope train`
    other = TrainConfig(dataset="moons", momentum=0.9, optimizer="sgd", dtype="float64",
                        val_fraction=0.1, standardize=True)
    name = run_name(other)
    for token in ("mom0.9", "float64", "val0.1", "std"):
        assert f"-{token}" in name
    # values equal to 6 digits would share a name: a hash tells them apart
    a, b = TrainConfig(lr=0.1), TrainConfig(lr=0.1000001)
    na, nb = run_names([a, b])
    assert na != nb and "-h" in na and "-h" in nb
    with pytest.raises(SweepError, match="twice"):
        from gradscope.training.sweep import check_configs

        check_configs([TrainConfig(dataset="moons"), TrainConfig(dataset="moons")])


# -- local runs -------------------------------------------------------------------------------
def test_local_sweep_matches_direct_training(tmp_path):
    configs = _grid(depth=[2, 3], activation=["tanh", "relu"])
    events = []
    out = tmp_path / "sweep"
    df = run_sweep(configs, out, jobs=2, progress=events.append)
    names = run_names(configs)
    assert sorted(p.stem for p in out.glob("*.h5")) == sorted(names)
    assert not (out / PARTIAL_DIR).exists()
    csv = pd.read_csv(out / SUMMARY_FILE)
    assert list(csv["name"]) == names == list(df["name"])
    assert set(csv["status"]) == {"completed"}
    for col in [*VERDICTS, "depth", "activation", "loss_end", "accuracy",
                "final_val_loss", "final_val_accuracy", "ratio_first", "ratio_early",
                "grad_ratio_first", "lr", "seed"]:
        assert col in csv.columns, col
    assert list(csv.columns[2:4]) == ["depth", "activation"]  # the swept options first
    assert csv["loss_end"].notna().all() and csv["ratio_first"].gt(0).all()
    spec = json.loads((out / GRID_FILE).read_text())
    assert spec["swept"] == ["depth", "activation"] and len(spec["runs"]) == 4
    assert events[0].name is None and events[-1].done == 4 and events[-1].left == 0
    assert df.attrs["trained"] and not df.attrs["skipped"]

    # the same configuration trained directly gives the same log
    name = names[-1]
    direct = train(TrainConfig(**{**TINY, "depth": 3, "activation": "relu"}), tmp_path / "d.h5")
    a, b = read_steps(out / f"{name}.h5"), read_steps(direct.path)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    tail = b["loss"].to_numpy()[-math.ceil(0.1 * len(b)):]
    assert csv["loss_end"].iloc[-1] == pytest.approx(np.median(tail), rel=1e-6)
    assert csv["final_train_loss"].iloc[-1] == pytest.approx(
        read_epochs(direct.path)["train_loss"].iloc[-1], rel=1e-6)
    assert summarize(out)["name"].tolist() == names


def test_summary_rows_taken_where_the_runs_trained_equal_the_logs_read_again(
        tmp_path, monkeypatch):
    import gradscope.training.sweep as sweep_mod

    calls = []
    read = sweep_mod._log_row
    monkeypatch.setattr(sweep_mod, "_log_row", lambda p: calls.append(p) or read(p))
    configs = _grid(depth=[2, 3], seeds=[0, 1])  # one stack of two and one of two
    out = tmp_path / "s"
    run_sweep(configs, out, jobs=1)
    # each log was read once, by the task that trained it; the summary took those rows
    assert sorted(Path(p).name for p in calls) == sorted(f"{n}.h5" for n in run_names(configs))
    written = (out / SUMMARY_FILE).read_bytes()
    assert written == summarize(out).to_csv(index=False).encode()

    # a row is used only while its log is the file it was read from
    a, b = run_names(configs)[:2]
    entry = sweep_mod.summary_entry(out / f"{a}.h5")
    assert summarize(out, {a: entry}).to_csv(index=False).encode() == written
    shutil.copy(out / f"{b}.h5", out / "x.tmp")
    os.replace(out / "x.tmp", out / f"{a}.h5")
    again = summarize(out, {a: entry}).set_index("name")
    assert again.loc[a, "loss_end"] == again.loc[b, "loss_end"]
    assert again.loc[a, "loss_end"] != pd.read_csv(out / SUMMARY_FILE).set_index(
        "name").loc[a, "loss_end"]


def test_resume_trains_only_missing_or_incomplete(tmp_path):
    out = tmp_path / "s"
    configs = _grid(depth=[2, 3], optimizer="sgd", lr=[0.1, 1e6], seeds=[0, 1], steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the diverging runs overflow
        first = run_sweep(configs, out, jobs=1)
    statuses = dict(zip(first["name"], first["status"]))
    assert set(statuses.values()) == {"completed", "diverged"}
    completed = [n for n, s in statuses.items() if s == "completed"]
    deleted, killed, junk, cut = completed[:4]
    (out / f"{deleted}.h5").unlink()
    with h5py.File(out / f"{killed}.h5", "r+") as f:  # as if the run had been killed
        f["status"][()] = np.bytes_("running".ljust(16))
    (out / f"{junk}.h5").write_bytes(b"not a log")
    log = out / f"{cut}.h5"  # a truncated log (which SWMR readers would retry for long)
    log.write_bytes(log.read_bytes()[:5000])
    (out / PARTIAL_DIR).mkdir()
    (out / PARTIAL_DIR / f"{deleted}.h5").write_bytes(b"left by a killed sweep")
    redo = [deleted, killed, junk, cut]
    kept = [n for n in statuses if n not in redo]
    before = {n: _fingerprint(out / f"{n}.h5") for n in kept}
    time.sleep(0.01)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = run_sweep(configs, out, jobs=1)
    assert sorted(again.attrs["trained"]) == sorted(redo)
    assert sorted(again.attrs["skipped"]) == sorted(kept)
    assert {n: _fingerprint(out / f"{n}.h5") for n in kept} == before
    for n in redo:
        assert read_status(out / f"{n}.h5")["status"] == "completed"
    assert list(again["status"]) == list(first["status"])
    assert not (out / PARTIAL_DIR).exists()

    third = run_sweep(configs, out, jobs=2)  # nothing left: no worker is started
    assert third.attrs["trained"] == [] and len(third.attrs["skipped"]) == len(configs)


def test_bad_configuration_writes_nothing(tmp_path):
    configs = _grid(activation=["relu", "nope"])
    with pytest.raises(ConfigError, match="unknown activation 'nope'"):
        run_sweep(configs, tmp_path / "s", jobs=1)
    assert not (tmp_path / "s").exists()


# -- the command ------------------------------------------------------------------------------
def _cli():
    from gradscope.cli.main import CleanGroup

    @click.group(cls=CleanGroup)
    def group():
        pass

    group.add_command(sweep)
    return group


TINY_ARGS = ["--dataset", "moons", "--width", "8", "--steps", "20"]


def test_cli_runs_and_resumes(tmp_path):
    out = tmp_path / "runs" / "cli"
    args = ["sweep", *TINY_ARGS, "--depth", "1:2", "--seeds", "0,1", "--jobs", "1",
            "--out-dir", str(out)]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out / SUMMARY_FILE)
    assert res.stderr.count("completed moons-") == 4  # one line per run (no terminal)
    assert len(pd.read_csv(out / SUMMARY_FILE)) == 4
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0 and "4 complete already, 0 to train" in res.stderr
    res = CliRunner().invoke(_cli(), [*args, "--depth", "1:3", "--dry-run"])
    assert res.exit_code == 0 and res.stdout.count("done ") == 4
    assert res.stdout.count("train ") == 2


@pytest.mark.parametrize("extra, words", [
    (["--activation", "relu,bogus"], "unknown activation 'bogus'"),
    (["--depth", "2:16:x"], "--depth: bad range '2:16:x'"),
    (["--depth", "4:2"], "START is above STOP"),
    (["--lr", "1e-3:1e-1"], "--lr: bad range"),
    (["--optimizer", "sgd,momentum", "--beta1", "0.8"], "does not take 'beta1'"),
    (["--dataset", "nosuch.csv"], "does not exist"),
    (["--batch-size", "16,0"], "--batch-size 0"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, words):
    out = tmp_path / "never"
    res = CliRunner().invoke(_cli(), ["sweep", *TINY_ARGS, "--out-dir", str(out), *extra])
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradscope: error:"), res.stderr
    assert words in lines[0]
    assert not out.exists()


def test_cli_scheduler_without_distributed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    out = tmp_path / "never"
    res = CliRunner().invoke(_cli(), ["sweep", *TINY_ARGS, "--out-dir", str(out),
                                      "--scheduler", "tcp://127.0.0.1:1"])
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "install gradscope[dask]" in lines[0]
    assert not out.exists()
    with pytest.raises(SweepError, match=r"gradscope\[dask\]"):
        run_sweep(_grid(), out, scheduler="tcp://127.0.0.1:1")
    assert not out.exists()


# -- Dask -------------------------------------------------------------------------------------
def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    configs = _grid(depth=[2, 3], activation=["tanh", "relu"])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        df = run_sweep(configs, tmp_path / "d", scheduler=cluster.scheduler_address)
    assert list(df["status"]) == ["completed"] * 4
    names = run_names(configs)
    assert sorted(p.stem for p in (tmp_path / "d").glob("*.h5")) == sorted(names)
    # the bytes that came back are the log a local run writes
    local = run_sweep(configs[:1], tmp_path / "l", jobs=1)
    np.testing.assert_allclose(df["loss_end"].iloc[0], local["loss_end"].iloc[0], rtol=1e-6)


def _wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_local_sweep_and_resume_finishes_it(tmp_path, signum):
    out = tmp_path / "out"
    args = ["--dataset", "moons", "--width", "8", "--steps", "4000", "--depth", "2",
            "--seeds", "0:3", "--jobs", "2", "--out-dir", str(out)]
    cmd = [sys.executable, "-c", "from gradscope.cli.sweep import sweep; sweep()", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        # stop it while trainings run (their logs are in .partial) and before all are done
        _wait_for(lambda: any((out / PARTIAL_DIR).glob("*.h5")) or proc.poll() is not None,
                  60, "a training to start")
        time.sleep(0.5)
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "sweep interrupted" in stderr and "run the same command again" in stderr
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert len(finished) < 4
    for p in (out / PARTIAL_DIR).glob("*.h5"):  # stopped trainings closed their logs
        assert read_status(p)["status"] == "interrupted"
    # the same command again trains only what is missing
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert f"{len(finished)} complete already, {4 - len(finished)} to train" in res.stderr
    assert len(list(out.glob("*.h5"))) == 4
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished
    assert set(pd.read_csv(out / SUMMARY_FILE)["status"]) == {"completed"}


def test_dask_subprocess_cluster_survives_a_killed_worker(tmp_path):
    distributed = pytest.importorskip("distributed")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command is not installed")
    procs: list[subprocess.Popen] = []
    env = dict(os.environ)

    def start(args, folder: Path):
        folder.mkdir()
        with open(folder / "log.txt", "wb") as log:
            p = subprocess.Popen(args, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                 env={**env, "TMPDIR": str(folder)}, start_new_session=True)
        procs.append(p)
        return p

    try:
        sched_file = tmp_path / "scheduler" / "scheduler.json"
        start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], tmp_path / "scheduler")
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 30,
                  "the scheduler")
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        # two workers, each in its own folder (no shared folder with the client)
        workers = [start([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                          "--no-dashboard", "--name", f"w{i}", "--death-timeout", "60",
                          "--local-directory", str(tmp_path / f"w{i}")], tmp_path / f"w{i}")
                   for i in range(2)]
        with distributed.Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=30)

        out = tmp_path / "out"
        sweeper = subprocess.Popen(
            [sys.executable, "-c", "from gradscope.cli.sweep import sweep; sweep()",
             "--dataset", "moons", "--width", "8", "--steps", "1500", "--depth", "2,3",
             "--activation", "tanh,relu", "--seeds", "0,1", "--scheduler", address,
             "--out-dir", str(out)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True)
        procs.append(sweeper)
        # kill a worker once a run is back and while it trains another one (its temporary
        # folder exists while it trains)
        _wait_for(lambda: (any(out.glob("*.h5"))
                           and any((tmp_path / "w1").glob("gradscope-sweep-*")))
                  or sweeper.poll() is not None, 60, "a run on the second worker")
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait(10)
        _, stderr = sweeper.communicate(timeout=120)
        assert sweeper.returncode == 0, stderr.decode()
        df = pd.read_csv(out / SUMMARY_FILE)
        assert len(df) == 8 and set(df["status"]) == {"completed"}, df[["name", "status"]]
        assert len(list(out.glob("*.h5"))) == 8
        assert not list((tmp_path / "w0").glob("*.h5"))  # the workers kept nothing
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: it and its children
                except OSError:
                    p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
