"""What to do next: remedies as command lines, `advise RUN.h5`, `report --check-advice`,
`gradscope demo`, and the README's API snippet and quick start.

The remedies are checked by running them: each command is parsed by the real CLI, and
--check-advice retrains a failing run with its first remedy; the verdicts before and after
come from the diagnosis, not from the remedy's own prediction.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import importlib

import gradscope
from gradscope import TrainConfig, train
from gradscope.analysis.remedies import remedies, remedies_for_run
from gradscope.analysis.theory import advise as theory_advise
from gradscope.cli.main import main
from gradscope.reading.readers import read_config

ROOT = Path(__file__).resolve().parents[1]
cli_main = importlib.import_module("gradscope.cli.main")

# the three failing runs: the quick start's sigmoid/standard (vanishing), ReLU with He init
# at gain 3 (exploding: chi1 = 9), a 16-layer ReLU net with the "standard" init (dead units)
CASES = {
    "vanishing": dict(depth=8, activation="sigmoid", init="standard", optimizer="sgd",
                      lr=0.05, steps=60),
    "exploding": dict(depth=8, activation="relu", init="he", init_gain=3.0, optimizer="sgd",
                      lr=0.01, steps=60),
    "dead_units": dict(depth=16, activation="relu", init="standard", optimizer="sgd",
                       lr=0.05, steps=60),
}


@pytest.fixture(scope="module")
def failing_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("failing")
    paths = {}
    for name, opts in CASES.items():
        paths[name] = d / f"{name}.h5"
        train(TrainConfig(**opts), paths[name])
    return paths


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_failing_runs_fail_as_named(failing_runs):
    for name, path in failing_runs.items():
        assert gradscope.diagnose(path)[name].flagged, name


def test_sigmoid_remedies_ranked_by_predicted_ratio(failing_runs):
    cfg = read_config(failing_runs["vanishing"])
    rs = remedies(cfg, ["vanishing"])
    assert rs[0].change == {"activation": "relu", "init": "he"}
    # the predicted ratios are mean-field theory's for the changed options
    for r in rs:
        if r.predicted_ratio is None:
            continue
        o = r.options
        expect = theory_advise(o["activation"], o["depth"], init=o["init"],
                               gain=o.get("init_gain", 1.0), width=o["width"])
        assert r.predicted_ratio == pytest.approx(expect["grad_ratio_from_inputs"])
    gain = [r for r in rs if set(r.change) == {"init_gain"}]
    assert gain and f"--init-gain {gain[0].change['init_gain']:g}" in gain[0].command
    assert any(r.change == {"norm": "batch"} for r in rs)
    assert any(r.change == {"residual": True} for r in rs)


def test_exploding_and_dead_remedies():
    base = dict(dataset="digits", depth=8, width=64, widths=[64] * 8, activation="relu",
                init="he", init_gain=3.0, optimizer="sgd", lr=0.05, epochs=5)
    rs = remedies(base, ["exploding"])
    # the init predicts the explosion (chi1 = 9): its fix first, then smaller steps
    assert rs[0].change == {"init_gain": 1.0}
    kinds = [tuple(r.change) for r in rs]
    assert ("lr",) in kinds and ("clip_norm",) in kinds
    assert [r for r in rs if "lr" in r.change][0].change["lr"] == pytest.approx(0.005)
    dead = remedies({**base, "init": "xavier", "init_gain": 1.0}, ["dead_units"])
    assert dead[0].change == {"init": "he"}
    assert {"activation": "leaky_relu"} in [r.change for r in dead]
    assert {"width": 128} in [r.change for r in dead]


def test_every_remedy_command_is_accepted_by_train(failing_runs, runner, tmp_path):
    """Paste each command (shortened to 2 steps): train must accept every option."""
    for name, path in failing_runs.items():
        d = gradscope.diagnose(path)
        rs = remedies_for_run(read_config(path), d, path)
        assert rs
        for i, r in enumerate(rs[:3]):   # what the summary and the terminal show
            words = shlex.split(r.command)
            assert words[:2] == ["gradscope", "train"]
            assert words[words.index("--out") + 1].startswith(str(path.with_suffix("")))
            args = words[2:words.index("--out")]
            res = runner.invoke(main, ["train", *args, "--steps", "2", "-q",
                                       "--out", f"r{name}{i}.h5"])
            assert res.exit_code == 0, (r.command, res.output)
            cfg = read_config(tmp_path / f"r{name}{i}.h5")
            for k, v in r.change.items():
                if k == "width":
                    assert cfg["widths"] == [v] * cfg["depth"]
                else:
                    assert cfg[k] == v, (k, cfg[k], v)


def test_check_advice_removes_each_verdict(failing_runs, runner, tmp_path):
    res = runner.invoke(main, ["report", *map(str, failing_runs.values()), "--check-advice",
                               "--out", "r.pdf", "--max-steps", "20"])
    assert res.exit_code == 0, res.output
    checked = dict(re.findall(r"checked: (\w+) with (.*)", res.output))
    assert set(checked) == set(CASES)
    for name, line in checked.items():
        assert "(still:" not in line and "gone: " in line, line
        assert name in line.split("gone: ")[1], line
        # independently of the report: the retrained log, diagnosed again
        after_log = next((tmp_path / "r-advice").glob(f"{name}--*.h5"))
        assert not gradscope.diagnose(after_log)[name].flagged
    assert "what to do next for vanishing.h5" in res.output
    assert "--activation relu --init he" in res.output


def test_advise_run_and_advise_names_init_gain(failing_runs, runner):
    res = runner.invoke(main, ["advise", str(failing_runs["vanishing"])])
    assert res.exit_code == 0, res.output
    assert "gradscope train --dataset digits --depth 8 --width 64 --activation relu --init he" \
        in res.output
    res = runner.invoke(main, ["advise", "--activation", "tanh", "--depth", "20",
                               "--init", "standard"])
    assert res.exit_code == 0
    assert "--init-gain 1.73" in res.output
    res = runner.invoke(main, ["advise"])
    assert res.exit_code != 0 and "RUN.h5" in res.output


def test_advise_default_init_is_the_readme_one_and_trains():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"### `gradscope advise --activation \S+ --depth \d+ \[--init (\w+)\]", readme)
    assert m
    opts = {p.name: p.default for p in main.commands["advise"].params}
    assert opts["init"] == m.group(1) == {p.name: p.default for p in
                                          main.commands["train"].params}["init"]


def test_readme_api_snippet_from_an_empty_folder(tmp_path):
    readme = (ROOT / "README.md").read_text()
    api = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    assert "runs/" in code
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "runs" / "sigmoid.h5").is_file()


def test_demo_runs_the_readme_long_form(runner, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && gradscope demo\n" in readme
    block = readme[readme.index("`gradscope demo` trains"):]
    long_form = re.search(r"```bash\n(.*?)```", block, re.S).group(1).strip().splitlines()
    # the demo prints exactly these commands
    res = runner.invoke(main, ["demo", "--help"])
    assert res.exit_code == 0
    printed = []
    for name, opts in cli_main.DEMO_RUNS:
        words = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items())
        printed.append(f"gradscope train {words} --force --out runs/quickstart/{name}.h5")
    printed.append("gradscope report runs/quickstart --out reports/quickstart.pdf")
    assert long_form == printed
    # and runs them (shortened here: 3 layers, 20 steps)
    short = tuple((n, {**o, "depth": 3, "epochs": 1}) for n, o in cli_main.DEMO_RUNS)
    monkeypatch.setattr(cli_main, "DEMO_RUNS", short)
    res = runner.invoke(main, ["demo"])
    assert res.exit_code == 0, res.output
    assert res.output.count("$ gradscope ") == 3
    assert (tmp_path / "reports" / "quickstart.pdf").stat().st_size > 10_000
    assert (tmp_path / "runs" / "quickstart" / "relu-he.h5").is_file()


def test_train_creates_missing_folders(tmp_path):
    out = tmp_path / "a" / "b" / "x.h5"
    r = train(TrainConfig(dataset="moons", depth=1, width=4, steps=2), out)
    assert r.status == "completed" and out.is_file()


def test_a_failing_run_without_a_cause_gets_slower_training_remedies():
    cfg = dict(dataset="digits", depth=2, width=64, widths=[64, 64], activation="sigmoid",
               init="he", optimizer="sgd", lr=0.05, epochs=3)
    rs = remedies(cfg, ["not_learning"])
    assert [r.change for r in rs] == [{"optimizer": "adam", "lr": None}, {"lr": 0.5},
                                      {"epochs": 9}]
    # Adam with its own default learning rate: no --lr on the command line
    assert "--optimizer adam" in rs[0].command and "--lr" not in rs[0].command
    # a healthy run or one with causes gets none of these
    assert remedies(cfg, []) == []
    assert all("optimizer" not in r.change for r in remedies(cfg, ["vanishing"]))
