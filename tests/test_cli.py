"""The command line (cli.py) with click's CliRunner in a temporary folder, and one real
subprocess: runs, refusals to overwrite, and one-line errors that write nothing."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import gradscope
from gradscope.cli.main import main

GRADSCOPE = str(Path(sys.executable).parent / "gradscope")
TINY = ["--dataset", "moons", "--depth", "2", "--width", "8"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


def _assert_one_line_error(result, *names):
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradscope: error: ")
    for name in names:
        assert name in lines[0], (name, lines[0])


def test_normal_run_prints_log_path_under_runs(runner, tmp_path):
    result = runner.invoke(main, ["train", *TINY, "--steps", "5"])
    assert result.exit_code == 0, result.output
    expected = Path("runs") / "moons-d2w8-relu-xavier-adam-lr0.001-bs32-s0.h5"
    assert (tmp_path / expected).is_file()
    out = result.stdout.strip()
    assert out.startswith("completed: 5 steps") and out.endswith(f"log: {expected}")
    assert gradscope.read_status(tmp_path / expected)["status"] == "completed"
    assert list(gradscope.read_steps(tmp_path / expected)["step"]) == [0, 1, 2, 3, 4]
    cfg = gradscope.read_config(tmp_path / expected)
    assert (cfg["dataset"], cfg["depth"], cfg["width"], cfg["steps"]) == ("moons", 2, 8, 5)


def test_out_option_and_name_reflects_options(runner, tmp_path):
    result = runner.invoke(main, ["train", *TINY, "--steps", "2", "--optimizer", "sgd",
                                  "--lr", "0.05", "--batch-size", "full", "--seed", "3",
                                  "--init-gain", "2"])
    assert result.exit_code == 0, result.output
    name = "moons-d2w8-relu-xavierg2-sgd-lr0.05-bsfull-s3.h5"
    assert (tmp_path / "runs" / name).is_file()
    result = runner.invoke(main, ["train", *TINY, "--steps", "2", "--out", "sub/dir/x.h5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub/dir/x.h5").is_file()
    assert str(Path("sub/dir/x.h5")) in result.stdout


def test_existing_out_refused_without_force_and_replaced_with_it(runner, tmp_path):
    target = tmp_path / "mine.h5"
    target.write_bytes(b"precious bytes")
    os.utime(target, (1_000_000_000, 1_000_000_000))
    result = runner.invoke(main, ["train", *TINY, "--steps", "2", "--out", "mine.h5"])
    _assert_one_line_error(result, "mine.h5", "--force")
    assert target.read_bytes() == b"precious bytes"
    assert target.stat().st_mtime == 1_000_000_000
    assert _files(tmp_path) == {Path("mine.h5")}
    result = runner.invoke(main, ["train", *TINY, "--steps", "2", "--out", "mine.h5", "--force"])
    assert result.exit_code == 0, result.output
    assert gradscope.read_status(target)["status"] == "completed"


def test_out_directory_refused(runner, tmp_path):
    (tmp_path / "adir").mkdir()
    result = runner.invoke(main, ["train", *TINY, "--steps", "2", "--out", "adir", "--force"])
    _assert_one_line_error(result, "adir")
    assert _files(tmp_path) == {Path("adir")}


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "garbage.npz").write_bytes(b"not a zip archive at all\x00\x01")
    (d / "text.csv").write_text("a,b,label\n1,x,0\n2,y,1\n3,z,0\n")
    (d / "good.csv").write_text("a,b,label\n1,2,0\n2,3,1\n3,1,0\n4,4,1\n")
    np.savez(d / "noX.npz", y=np.arange(4))
    return d


BAD = [
    (["--depth", "0"], ["--depth 0"]),
    (["--width", "0"], ["--width 0"]),
    (["--widths", "8,0"], ["8,0"]),
    (["--activation", "swish"], ["'swish'"]),
    (["--init", "glorot"], ["'glorot'"]),
    (["--optimizer", "lbfgs"], ["'lbfgs'"]),
    (["--lr", "-0.1"], ["--lr", "-0.1"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--lr", "0"], ["--lr", "0"]),
    (["--batch-size", "0"], ["--batch-size", "'0'"]),
    (["--batch-size", "half"], ["--batch-size", "'half'"]),
    (["--steps", "0"], ["--steps 0"]),
    (["--epochs", "2", "--steps", "3"], ["--epochs", "--steps"]),
    (["--val-fraction", "1"], ["--val-fraction 1"]),
    (["--dtype", "float16"], ["'float16'"]),
    (["--probe-every", "7", "--log-every", "2"], ["--probe-every 7"]),
    (["--optimizer", "adam", "--rho", "0.9"], ["adam", "'rho'"]),
    (["--optimizer", "sgd", "--beta1", "0.9"], ["sgd", "'beta1'"]),
    (["--momentum", "-1", "--optimizer", "sgd"], ["--momentum", "-1"]),
    (["--depth", "abc"], ["'abc'"]),
    (["--no-such-option"], ["--no-such-option"]),
]


@pytest.mark.parametrize("args, names", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_one_line_error_no_file(runner, tmp_path, args, names):
    before = _files(tmp_path)
    result = runner.invoke(main, ["train", "--dataset", "moons", "--steps", "2", *args])
    _assert_one_line_error(result, *names)
    assert not (tmp_path / "runs").exists()
    assert _files(tmp_path) == before


DATA_BAD = [
    (["--dataset", "inputs/missing.csv"], ["inputs/missing.csv", "does not exist"]),
    (["--dataset", "inputs/garbage.npz"], ["inputs/garbage.npz", "cannot read"]),
    (["--dataset", "inputs/noX.npz"], ["inputs/noX.npz", "'X'"]),
    (["--dataset", "inputs/text.csv"], ["'b'", "not numeric"]),
    (["--dataset", "inputs/good.csv", "--target", "zz"], ["'zz'"]),
    (["--dataset", "mnist"], ["'mnist'"]),
    (["--dataset", "moons", "--target", "y"], ["--target"]),
]


@pytest.mark.parametrize("args, names", DATA_BAD, ids=[" ".join(a) for a, _ in DATA_BAD])
def test_bad_data_one_line_error_no_file(runner, tmp_path, inputs, args, names):
    before = _files(tmp_path)
    result = runner.invoke(main, ["train", "--steps", "2", *args])
    _assert_one_line_error(result, *names)
    assert not (tmp_path / "runs").exists()
    assert _files(tmp_path) == before


def test_csv_dataset_trains(runner, tmp_path, inputs):
    result = runner.invoke(main, ["train", "--dataset", "inputs/good.csv", "--depth", "1",
                                  "--width", "3", "--steps", "2", "--val-fraction", "0",
                                  "--out", "csv.h5"])
    assert result.exit_code == 0, result.output
    cfg = gradscope.read_config(tmp_path / "csv.h5")
    assert (cfg["n_train"], cfg["n_features"], cfg["n_outputs"]) == (4, 2, 2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverged_run_warns_in_one_line_and_exits_zero(runner, tmp_path):
    result = runner.invoke(main, ["train", *TINY, "--optimizer", "sgd", "--lr", "1e6",
                                  "--steps", "50", "--out", "div.h5"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        f"warning: run diverged: {gradscope.read_status(tmp_path / 'div.h5')['message']}"
    ]
    assert result.stdout.startswith("diverged: ")
    assert gradscope.read_status(tmp_path / "div.h5")["status"] == "diverged"


def _run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="")
    return subprocess.run([GRADSCOPE, *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_real_terminal_gets_no_traceback(tmp_path):
    p = _run(["train", "--depth", "0"], tmp_path)
    assert p.returncode != 0
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "gradscope: error: --depth 0; accepted: a whole number >= 1"
    ]
    assert list(tmp_path.iterdir()) == []


def test_real_terminal_diverged_run_prints_one_line(tmp_path):
    p = _run(["train", *TINY, "--optimizer", "sgd", "--lr", "1e6", "--steps", "50",
              "--out", "div.h5"], tmp_path)
    assert p.returncode == 0
    assert p.stderr.strip().splitlines() == [
        "warning: run diverged: loss became nan at step 2 (epoch 0)"
    ]


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_bad_lr_message_states_what_is_accepted(runner, value):
    result = runner.invoke(main, ["train", "--dataset", "moons", "--lr", value])
    _assert_one_line_error(result, f"--lr {value}", "accepted: a finite number > 0")
