"""gradscope watch: the live view's reading (only new rows, thinning, stalled runs), its
drawing (log-scale bars, sparkline), the folder order, and the view in a real terminal
(tmux) against a run being trained."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rich")

import gradscope
from gradscope.views import watch as W

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
GS = [sys.executable, "-m", "gradscope"]


def _train(path, steps=300, **options):
    cfg = dict(dataset="digits", depth=6, activation="sigmoid", init="standard",
               optimizer="sgd", steps=steps, probe_every=50)
    cfg.update(options)
    gradscope.train(gradscope.TrainConfig(**cfg), path)
    return path


@pytest.fixture(scope="module")
def sigmoid_log(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("watch") / "sigmoid.h5")


def _screen(renderable, width=110) -> str:
    from rich.console import Console

    c = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    c.print(renderable)
    return c.export_text()


# -- pieces ------------------------------------------------------------------------------------
def test_parse_every():
    assert W.parse_every("2s") == 2.0
    assert W.parse_every("500ms") == 0.5
    assert W.parse_every("1m") == 60.0
    assert W.parse_every(3) == 3.0
    for bad in ("0", "-1s", "fast", "2h", "nan"):
        with pytest.raises(ValueError, match="accepted"):
            W.parse_every(bad)


def test_log_bars_are_proportional_to_decades():
    # 1e-6 .. 1e-1 spans decades -6 .. -1; a bar's length is its distance from 1e-6 in decades
    bars, lo, hi = W.log_bars([1e-6, 1e-4, 1e-1, 0.0, math.nan], width=50)
    assert (lo, hi) == (-6.0, -1.0)
    assert bars[:3] == [1, 20, 50]          # 0 decades -> the 1-character minimum; 2 of 5; 5 of 5
    assert bars[3:] == [0, 0]               # nothing to draw for zero or NaN


def test_sparkline_scales_and_marks_non_finite():
    line, log = W.sparkline([1, 2, 3, 4], width=4)
    assert line == "▁▃▆█" and not log
    line, log = W.sparkline([1e-3, 1e-2, 1e-1, 1.0], width=4)
    assert log and line == "▁▃▆█"           # equal steps in log10 are equal steps of the bar
    line, _ = W.sparkline([1.0, math.inf, 2.0], width=3)
    assert line[1] == "×"


# -- reading -----------------------------------------------------------------------------------
def test_tail_of_a_finished_log_equals_the_readers(sigmoid_log):
    t = W.RunTail(sigmoid_log, "s")
    assert t.poll()
    steps, layers = gradscope.read_steps(sigmoid_log), gradscope.read_layers(sigmoid_log)
    np.testing.assert_array_equal(t.steps["loss"], steps["loss"])
    np.testing.assert_array_equal(t.layers["delta_norm"], layers["delta_norm"])
    assert t.status == "completed" and t.ended
    assert not t.poll()                      # nothing new: nothing read
    d = t.diagnose(force=True)
    ref = gradscope.diagnose(sigmoid_log)
    assert d.headline == ref.headline and d.verdict == "not_learning"
    assert d.cause_names[0] == "vanishing"
    assert d["vanishing"].value == pytest.approx(ref["vanishing"].value)


def test_tail_reads_only_new_rows_of_a_live_run(tmp_path, monkeypatch):
    """While a run is trained in another process, every poll reads the rows after the last
    ones it read (contiguous, never twice), and in the end holds the whole log."""
    path = tmp_path / "live.h5"
    calls = []
    real = W.read_rows

    def spy(f, name, start=0, stop=None):
        df = real(f, name, start, stop)
        calls.append((name, start, start + len(df)))
        return df

    monkeypatch.setattr(W, "read_rows", spy)
    monkeypatch.setattr(W, "KEEP_STEPS", 10**6)   # no thinning: compare every row
    proc = subprocess.Popen(GS + ["train", "--dataset", "digits", "--depth", "3", "--steps",
                                  "4000", "--out", str(path), "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t = W.RunTail(path, "live")
    polls_with_rows = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = len(calls)
            t.poll()
            polls_with_rows += any(c[0] == "layers" for c in calls[n:])
            if t.ended:
                break
            time.sleep(0.1)
    finally:
        proc.wait(timeout=60)
    t.poll()
    assert t.status == "completed", proc.stderr.read()
    assert polls_with_rows >= 2, "the run ended before the view saw it grow"
    for table in ("steps", "layers"):
        ranges = [(a, b) for name, a, b in calls if name == table]
        assert ranges[0][0] == 0
        # each read starts where the rows read before end: none twice, none left out
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))
    np.testing.assert_array_equal(t.steps["step"], gradscope.read_steps(path)["step"])
    np.testing.assert_array_equal(t.layers["grad_norm"], gradscope.read_layers(path)["grad_norm"])


def test_history_is_thinned_but_keeps_probe_steps_and_the_verdict(sigmoid_log, monkeypatch):
    monkeypatch.setattr(W, "KEEP_STEPS", 40)
    t = W.RunTail(sigmoid_log, "s")
    t.poll()
    assert len(t.steps) <= 40 and t.layers["step"].nunique() <= 40 + 6
    probe_steps = set(gradscope.read_layers(sigmoid_log).dropna(subset=["dead_frac"])["step"])
    assert probe_steps <= set(t.layers["step"])
    assert t.steps["step"].iloc[-1] == 299 and t.steps["step"].iloc[0] == 0
    assert t.diagnose(force=True).cause_names[0] == "vanishing"


def test_a_killed_run_is_shown_stalled(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(GS + ["train", "--dataset", "digits", "--steps", "200000",
                                  "--out", str(path), "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = W.RunTail(path, "killed", stale=0.5)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (t.rows["steps"] > 0):
            t.poll()
            time.sleep(0.1)
        assert t.status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)
    t.poll()
    time.sleep(0.7)
    t.poll()
    assert t.status == "stalled" and t.ended
    assert gradscope.read_status(path)["status"] == "running"   # the file still says running


def test_folder_rows_put_what_needs_attention_first(tmp_path, sigmoid_log):
    d = tmp_path / "runs"
    d.mkdir()
    _train(d / "healthy.h5", depth=2, activation="relu", init="he", optimizer="adam",
           steps=100)
    shutil.copy(sigmoid_log, d / "vanishing.h5")
    _train(d / "diverged.h5", depth=2, activation="relu", init="he", lr=1e6, steps=50)
    (d / "sweep.json").write_text('{"runs": [{"name": "healthy"}, {"name": "later"}, '
                                  '{"name": "vanishing"}, {"name": "diverged"}]}')
    w = W.Watch([d])
    w.poll()
    rows = w.rows()
    assert [r["name"] for r in rows] == ["diverged", "vanishing", "healthy", "later"]
    assert [r["status"] for r in rows] == ["diverged", "completed", "completed", "waiting"]
    assert rows[1]["verdict"].startswith("not_learning: cause vanishing")
    assert rows[2]["verdict"] == "healthy"
    assert not w.all_ended()                 # "later" is planned and has no log yet
    _train(d / "later.h5", depth=2, activation="relu", init="he", steps=20)
    w.poll()
    assert w.all_ended()
    text = _screen(W.render_table(w), width=300)
    # the diverged and vanishing runs fail, and the 20-step run has not learned yet
    assert "4 runs: 1 diverged, 3 completed; 3 with an alarm" in text
    assert w.runs and sum(t.diagnosis.severity is not None for t in w.runs.values()) == 3


def test_single_run_view_shows_the_staircase_and_the_verdict(sigmoid_log):
    w = W.Watch([sigmoid_log])
    w.poll()
    w.single.diagnose(force=True)
    text = _screen(W.render(w, 110))
    bars = _bars(text)
    assert list(bars) == ["0", "1", "2", "3", "4", "5", "out"]
    lengths = list(bars.values())
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1] / 3
    assert "verdict: not_learning: cause vanishing" in text
    assert "step 300 / 300" in text and "completed" in text


def _bars(text: str) -> dict:
    """Layer -> bar length, from the rows of the single-run view."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+|out)\s+(█+)", line)
        if m:
            out[m.group(1)] = len(m.group(2))
    return out


# -- the command -------------------------------------------------------------------------------
def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from gradscope.cli.main import main

    bad = tmp_path / "notalog.h5"
    bad.write_text("hello")
    for args, want in ((["watch", str(tmp_path / "missing.h5")], "does not exist"),
                       (["watch", str(bad)], "not an HDF5 file"),
                       (["watch", str(tmp_path), "--every", "0"], "accepted: a duration")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0
        assert want in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
        assert r.output.startswith("gradscope: error: ")


def test_once_prints_the_view(sigmoid_log):
    r = subprocess.run(GS + ["watch", str(sigmoid_log), "--once"], env={**ENV, "COLUMNS": "110"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "verdict: not_learning: cause vanishing" in r.stdout and "|dL/dz|" in r.stdout


def test_once_on_a_run_that_failed_before_its_first_step(sigmoid_log, tmp_path):
    from logtools import rewrite

    def drop_all_rows(tables):
        for name in tables:
            tables[name] = tables[name].iloc[:0]

    failed = rewrite(sigmoid_log, tmp_path / "failed.h5", drop_all_rows, status="failed",
                     message="MemoryError at step 0 (epoch 0)")
    r = subprocess.run(GS + ["watch", str(failed), "--once"], env={**ENV, "COLUMNS": "110"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "failed" in r.stdout and "MemoryError at step 0" in r.stdout
    # the run is over: the view must not promise a step that will never come
    assert "no step was logged before the run ended" in r.stdout
    assert "waiting" not in r.stdout


def test_import_gradscope_does_not_import_rich_or_the_views():
    code = ("import sys, gradscope; print(sorted(m for m in ('rich', 'matplotlib', "
            "'gradscope.views.watch', 'gradscope.views.notebook') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stderr


# -- in a terminal -----------------------------------------------------------------------------
tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, name, command, cwd):
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40",
                        "-c", str(cwd), f"{command}; echo EXIT=$?; sleep 60"], env=ENV,
                       check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, pattern, timeout=60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.screen()
            if re.search(pattern, s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on the screen:\n{self.screen()}")

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def term(tmp_path):
    sessions = []

    def start(command):
        s = Tmux(f"gswatch-{os.getpid()}-{len(sessions)}", command, tmp_path)
        sessions.append(s)
        return s

    yield start
    for s in sessions:
        s.close()


def _cmd(*args) -> str:
    return " ".join([f"PYTHONPATH={ROOT}", sys.executable, "-m", "gradscope", *args])


@tmux
def test_train_watch_in_a_terminal(term, tmp_path):
    """`gradscope train --watch`: the screen shows the run live (status running, the step
    counting up, the layer bars as a staircase falling towards layer 0, the vanishing
    verdict); Ctrl-C stops both the view and the run, which is recorded as interrupted."""
    s = term(_cmd("train", "--dataset", "digits", "--depth", "6", "--activation", "sigmoid",
                  "--init", "standard", "--optimizer", "sgd", "--steps", "1000000", "--out",
                  "run.h5", "--watch"))
    live = s.wait_for(r"verdict: not_learning: cause vanishing", timeout=90)
    assert re.search(r"run\.h5\s+running\s+step [\d,]+ / 1,000,000", live)
    assert "q: quit" in live and "digits d6w64 sigmoid standard sgd" in live
    bars = _bars(live)
    assert list(bars) == ["0", "1", "2", "3", "4", "5", "out"]
    assert list(bars.values()) == sorted(bars.values())
    first = _step(live)
    later = s.wait_for(r"steps/s", timeout=30)
    deadline = time.monotonic() + 30
    while _step(later) <= first and time.monotonic() < deadline:
        time.sleep(0.3)
        later = s.screen()
    assert _step(later) > first, "the step counter did not move"
    s.keys("C-c")
    end = s.wait_for(r"EXIT=130", timeout=60)
    assert "interrupted" in end and "the log holds every step before it" in end
    assert gradscope.read_status(tmp_path / "run.h5")["status"] == "interrupted"


def _step(screen: str) -> int:
    return int(re.search(r"step ([\d,]+) /", screen).group(1).replace(",", ""))


@tmux
def test_watch_a_folder_picks_up_later_runs_and_quits_on_q(term, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    s = term(_cmd("watch", str(runs), "--every", "300ms"))
    s.wait_for(r"0 runs", timeout=30)
    proc = subprocess.Popen(GS + ["train", "--dataset", "digits", "--steps", "100000",
                                  "--out", str(runs / "late.h5"), "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        screen = s.wait_for(r"late\s+running", timeout=60)
        assert "1 run: 1 running" in screen
        s.keys("q")
        s.wait_for(r"EXIT=0", timeout=20)
        assert proc.poll() is None             # quitting the view leaves the run alone
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert gradscope.read_status(runs / "late.h5")["status"] == "interrupted"


@tmux
def test_watch_shows_a_diverged_and_a_killed_run_and_exits(term, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _train(runs / "diverged.h5", depth=2, activation="relu", init="he", lr=1e6, steps=50)
    proc = subprocess.Popen(GS + ["train", "--dataset", "digits", "--steps", "100000",
                                  "--out", str(runs / "killed.h5"), "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = term(_cmd("watch", str(runs), "--every", "300ms", "--stale", "2s"))
    try:
        s.wait_for(r"killed\s+running", timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    end = s.wait_for(r"EXIT=0", timeout=60)
    assert re.search(r"diverged\s+diverged", end)
    assert re.search(r"killed\s+stalled", end)
    assert end.index("diverged  ") < end.index("killed  ")


def test_short_names_drop_the_words_every_name_shares():
    names = ["digits-d8w64-sigmoid-sgd-lr0.1-s0", "digits-d2w64-relu-sgd-lr0.1-s0",
             "digits-d2w64-relu-adam-lr0.1-s0"]
    assert W.short_names(names) == ["d8w64-sigmoid-sgd", "d2w64-relu-sgd", "d2w64-relu-adam"]
    assert W.short_names(["a-b", "a-b"]) == ["b", "b"]       # never an empty name
    assert W.short_names(["only-one"]) == ["only-one"]
