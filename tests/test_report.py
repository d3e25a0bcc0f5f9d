"""gradscope.views.report: PDF reports of real (tiny) runs, and bad inputs."""

import re
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
from gradscope.analysis.diagnose import VERDICTS
from gradscope.record.schema import LogError
from gradscope.training.loop import TrainConfig, train
from gradscope.views import report

PDFTOTEXT = shutil.which("pdftotext")
GRADSCOPE = Path(sys.executable).with_name("gradscope")


def pdf_pages(path) -> int:
    """Pages of a PDF without a PDF library: the page objects (not the /Pages tree)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", Path(path).read_bytes()))


def pdf_text(path) -> str:
    out = subprocess.run([PDFTOTEXT, str(path), "-"], capture_output=True, text=True,
                         check=True)
    return re.sub(r"\s+", " ", out.stdout)  # wrapped lines joined


def tiny(path, **kw):
    opts = {"dataset": "moons", "depth": 3, "width": 16, "steps": 120, "probe_every": 40,
            "seed": 0}
    opts.update(kw)
    train(TrainConfig(**opts), path)
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {
        "relu": tiny(d / "relu.h5", activation="relu", init="he", optimizer="adam"),
        "sigmoid": tiny(d / "sigmoid.h5", dataset="digits", activation="sigmoid",
                        init="standard", optimizer="sgd", lr=0.1, depth=6, steps=90),
        "tanh": tiny(d / "tanh.h5", activation="tanh", init="xavier", optimizer="sgd",
                     lr=0.1, val_fraction=0.0),
    }


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    d = tmp_path_factory.mktemp("diverged")
    return tiny(d / "diverged.h5", dataset="digits", activation="relu", init="he",
                optimizer="sgd", lr=1e3, steps=50)


def test_one_run(logs, tmp_path):
    out = tmp_path / "one.pdf"
    r = report.make_report([logs["relu"]], out)
    assert Path(r["out"]) == out and out.exists()
    assert r["titles"] == ["Summary", "Gradient flow", "Gradient profile across depth",
                           "Dead ReLU units", "Activation saturation", "Update / weight ratio",
                           "Loss and accuracy", "How to read this report"]
    assert r["pages"] == len(r["titles"]) == pdf_pages(out)
    d, = r["diagnoses"]
    assert d.status == "completed" and d.verdict in VERDICTS
    assert r["runs"] == ["relu"]
    # no temporary file left beside the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pdf"]
    if PDFTOTEXT:
        text = pdf_text(out)
        for key in ("Summary", "Gradient flow", "relu", "verdict:", "status: completed",
                    "validation loss", "theory: chi1", "layer (0 = input side)",
                    "log10 ||dL/dW_l||", "0.001"):
            assert key in text, key


def test_several_runs_from_a_directory(logs, tmp_path):
    paths = report.collect_logs([logs["relu"].parent])
    assert [p.name for p in paths] == ["relu.h5", "sigmoid.h5", "tanh.h5"]
    out = tmp_path / "several.pdf"
    r = report.make_report(paths, out)
    assert r["runs"] == ["relu", "sigmoid", "tanh"]
    # three runs: the summary's at-a-glance figure shows their ratios, no page of its own
    assert "Gradient ratio across depth, run by run" not in r["titles"]
    assert r["titles"][-1] == "How to read this report"
    assert "Dead ReLU units" in r["titles"]           # relu is among them
    assert r["pages"] == pdf_pages(out) == len(r["titles"])
    by_run = {Path(d.run).stem: d for d in r["diagnoses"]}
    assert by_run["sigmoid"]["vanishing"].flagged      # 6 sigmoid layers, standard init
    if PDFTOTEXT:
        text = pdf_text(out)
        assert "Loss and accuracy" in text and "sigmoid" in text and "tanh" in text
        assert "Not applicable to sigmoid (sigmoid), tanh (tanh)" in text
        assert "vanishing" in text


def test_no_dead_unit_page_without_relu(logs, tmp_path):
    r = report.make_report([logs["sigmoid"], logs["tanh"]], tmp_path / "x.pdf")
    assert "Dead ReLU units" not in r["titles"]
    assert r["pages"] == pdf_pages(tmp_path / "x.pdf")


def test_diverged_run(diverged, tmp_path):
    assert gradscope.read_status(diverged)["status"] == "diverged"
    out = tmp_path / "div.pdf"
    r = report.make_report([diverged], out)
    d, = r["diagnoses"]
    assert d["diverged"].flagged and d.status == "diverged" and d.verdict == "diverged"
    assert pdf_pages(out) == r["pages"]
    if PDFTOTEXT:
        text = pdf_text(out)
        assert "diverged" in text and "status: diverged" in text


def test_partial_log_of_a_killed_run(tmp_path):
    log = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [str(GRADSCOPE), "train", "--dataset", "digits", "--depth", "3", "--width", "16",
         "--steps", "1000000", "--probe-every", "20", "--out", str(log), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 40
        rows = 0
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if log.exists():
                try:
                    rows = gradscope.read_status(log)["rows"]["probes"]
                except LogError:
                    continue
                if rows >= 3 * 4:  # three probe steps of four layers
                    break
        assert rows, "the training run wrote no rows in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = tmp_path / "killed.pdf"
    r = report.make_report([log], out)
    d, = r["diagnoses"]
    assert d.status == "running" and d.live  # killed: the status was never finalised
    assert r["pages"] == pdf_pages(out) >= 7
    if PDFTOTEXT:
        assert "status: running" in pdf_text(out)


def test_truncated_log_is_a_log_error(logs, tmp_path):
    # a truncated copy must fail at once with LogError, not hang in HDF5's SWMR retries:
    # run it in a subprocess with a timeout
    bad = tmp_path / "half.h5"
    data = Path(logs["relu"]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    tiny_bad = tmp_path / "head.h5"
    tiny_bad.write_bytes(data[:40])
    code = (
        "import sys\n"
        "from gradscope.views.report import make_report\n"
        "from gradscope.reading.readers import LogError\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        make_report([p], p + '.pdf')\n"
        "    except LogError as e:\n"
        "        print('LogError', str(e).count(chr(10)), e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(bad), str(tiny_bad)],
                         check=False, capture_output=True, text=True, timeout=60)
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout + res.stderr
    for line in lines:
        assert line.startswith("LogError 0 ") and "truncated" in line
    assert not (tmp_path / "half.h5.pdf").exists()


def test_bad_inputs_raise_log_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a log")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    for p, words in ((tmp_path / "missing.h5", "does not exist"),
                     (text, "not an HDF5 file"), (other, "not a gradscope log")):
        with pytest.raises(LogError, match=words) as e:
            report.make_report([p], tmp_path / "r.pdf")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "r.pdf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_collect_logs(tmp_path, logs):
    (tmp_path / "b.h5").write_bytes(b"")
    (tmp_path / "a.h5").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    f = logs["relu"]
    got = report.collect_logs([tmp_path, f, str(f)])
    assert [p.name for p in got] == ["a.h5", "b.h5", "relu.h5"]   # sorted, no duplicate
    assert report.collect_logs(str(f)) == [Path(f)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LogError, match="without .h5 logs"):
        report.collect_logs([empty])
    with pytest.raises(LogError, match="does not exist"):
        report.collect_logs([tmp_path / "nope"])


def test_verdict_table(logs):
    from gradscope.analysis.diagnose import diagnose

    ds = [diagnose(logs["relu"]), diagnose(logs["sigmoid"])]
    table = report.verdict_table(ds)
    lines = table.splitlines()
    assert lines[0].split() == ["run", "status", "accuracy", "verdict", "cause", "/",
                                "warnings"]
    assert len(lines) == 4
    assert lines[2].startswith("relu.h5") and lines[3].startswith("sigmoid.h5")
    # each line: the verdict, and for a failure its causes in their order
    for d, line in zip(ds, lines[2:]):
        assert f" {d.verdict} " in line
        if d.failing:
            assert line.rstrip().endswith(", ".join(d.cause_names) or "no cause found")
        acc = d["not_learning"].numbers["accuracy"]
        assert f"{100 * acc:.1f}%" in line
    assert ds[1].verdict == "not_learning" and ds[1].cause_names[0] == "vanishing"


def test_read_layers_binned_matches_full_table(logs):
    path = logs["relu"]
    full = gradscope.read_layers(path)
    k = full["step"].nunique()
    whole = report.read_layers_binned(path, max_steps=k)       # short enough: the table
    assert len(whole) == len(full)
    b = report.read_layers_binned(path, max_steps=12, per_bin=1000)
    steps = np.sort(full["step"].unique())
    assert b["step"].nunique() <= 12
    assert b["step"].min() == steps[0] and b["step"].max() == steps[-1]
    assert set(full.columns) <= set(b.columns)
    # each bin holds the medians over its logged steps
    for _, row in b[b["layer"] == 1].iterrows():
        sel = full[(full["layer"] == 1) & (full["step"] >= row["step_lo"])
                   & (full["step"] <= row["step_hi"])]
        assert row["grad_norm"] == pytest.approx(sel["grad_norm"].median())
        probe = sel["dead_frac"].dropna()
        if len(probe):
            assert row["dead_frac"] == pytest.approx(probe.median())
    # a sample of the steps of each bin (per_bin=2): still bounded and ordered
    s = report.read_layers_binned(path, max_steps=12, per_bin=2)
    assert list(s["step"]) == list(b["step"])


def test_predicted_profile_overlay(logs):
    run = report.load_run(logs["relu"])
    theory = run.diagnosis.theory
    if not theory:
        pytest.skip("gradscope.analysis.theory not available")
    pred = report._predicted_profile(run)
    first = run.layers[run.layers["step"] == run.layers["step"].min()]
    out_delta = float(first[first["layer"] == first["layer"].max()]["delta_norm"].iloc[0])
    assert len(pred) == run.config["depth"] + 1
    assert pred.iloc[-1] == pytest.approx(out_delta)          # scaled at the output layer


def test_thresholds_are_checked_before_reading(logs, tmp_path):
    with pytest.raises(ValueError, match="unknown threshold"):
        report.make_report([logs["relu"]], tmp_path / "t.pdf", bogus=1)
    assert not (tmp_path / "t.pdf").exists()


def test_collect_logs_orders_numbers_by_value(tmp_path):
    for name in ("run-d12.h5", "run-d4.h5", "run-d8.h5", "other.h5"):
        (tmp_path / name).write_bytes(b"")
    got = [p.name for p in report.collect_logs(tmp_path)]
    assert got == ["other.h5", "run-d4.h5", "run-d8.h5", "run-d12.h5"]


def test_report_command_prints_verdicts_with_causes(logs, tmp_path):
    from click.testing import CliRunner

    from gradscope.analysis.diagnose import diagnose
    from gradscope.cli.main import main

    out = tmp_path / "cli.pdf"
    res = CliRunner().invoke(main, ["report", str(logs["relu"]), str(logs["sigmoid"]),
                                    "--out", str(out), "--stalled-updates", "1e-5"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["run", "status", "accuracy", "verdict"]
    sig = diagnose(logs["sigmoid"], stalled_updates=1e-5)
    line = next(x for x in lines if x.startswith("sigmoid.h5"))
    assert f" {sig.verdict} " in line and line.rstrip().endswith(", ".join(sig.cause_names))
    assert out.exists()
    bad = CliRunner().invoke(main, ["report", str(logs["relu"]), "--out",
                                    str(tmp_path / "bad.pdf"), "--not-learning", "2"])
    assert bad.exit_code != 0 and "not_learning=2" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.pdf").exists()
