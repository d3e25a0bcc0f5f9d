"""gradscope.views.report on a real (tiny) sweep and on runs that differ only in a remedy."""

import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gradscope.analysis.diagnose import diagnose
from gradscope.training.loop import TrainConfig, train
from gradscope.training.sweep import expand_grid, run_sweep, summarize
from gradscope.views import plots, report

PDFTOTEXT = shutil.which("pdftotext")
SWEEP_PAGES = ["Vanishing-gradient phase diagram", "Dead ReLU units across depth",
               "Final accuracy over the grid"]


def pdf_text(path) -> str:
    out = subprocess.run([PDFTOTEXT, str(path), "-"], capture_output=True, text=True,
                         check=True)
    return re.sub(r"\s+", " ", out.stdout)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """3 depths x 2 activations x 2 inits x 2 seeds = 24 runs of 40 steps (about 3 s)."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    configs = expand_grid({"dataset": "moons", "steps": 40, "width": 16,
                           "depth": [2, 4, 8], "activation": ["sigmoid", "relu"],
                           "init": ["standard", "he"], "optimizer": "sgd", "lr": 0.1,
                           "seeds": [0, 1]})
    summary = run_sweep(configs, out, jobs=1)
    assert (summary["status"] == "completed").all()
    return out


@pytest.fixture(scope="module")
def sweep_report(sweep_dir, tmp_path_factory):
    pdf = tmp_path_factory.mktemp("pdf") / "sweep.pdf"
    return report.make_report(report.collect_logs(sweep_dir), pdf)


def test_sweep_report_pages(sweep_report):
    r = sweep_report
    titles = r["titles"]
    assert r["sweep"] is not None and r["sweep"]["seeds"] == 2
    # right after the summary pages, in this order
    n_summary = sum(t.startswith("Summary") for t in titles)
    assert n_summary >= 2                                # 24 runs: several summary pages
    assert titles[n_summary:n_summary + 3] == SWEEP_PAGES
    # per-run pages: a sample, said so in the captions
    assert len(r["sampled"]) == report.SAMPLE_RUNS < len(r["runs"]) == 24
    assert titles.count("Gradient profile across depth") == 1
    assert titles[-1] == "Gradient ratio across depth, run by run"
    assert r["remedy_groups"] == []
    if PDFTOTEXT:
        text = pdf_text(r["out"])
        for t in SWEEP_PAGES:
            assert t in text
        assert "mean-field prediction" in text and "vanishing (< 0.001)" in text
        assert f"Showing {report.SAMPLE_RUNS} of 24 runs" in text
        # the verdict table covers every run (names shortened the same way)
        names, note = report._short_names([Path(d["run"]).name for d in r["diagnoses"]])
        assert note and "run names without their common" in text
        for name in names:
            assert name in text, name


def test_run_table_matches_the_diagnosis(sweep_report):
    table = sweep_report["table"]
    assert len(table) == 24
    assert {"run", "depth", "activation", "init", "optimizer", "seed", "ratio_first",
            "ratio_early", "predicted_ratio", "dead_frac", "accuracy", "variant",
            "remedy"} <= set(table.columns)
    assert (table["variant"] == "").all() and (table["remedy"] == "none").all()
    for d, (_, row) in zip(sweep_report["diagnoses"], table.iterrows()):
        again = diagnose(d["run"])
        ev = again["vanishing_evidence"]
        assert row["ratio_early"] == pytest.approx(ev["ratio_median_early"])
        assert row["ratio_first"] == pytest.approx(ev["ratio_first"])
        assert row["predicted_ratio"] == pytest.approx(again["theory"]["predicted_ratio"])
        by_layer = again["dead_units_evidence"].get("by_layer") or {}
        if row["activation"] == "relu":
            assert row["dead_frac"] == pytest.approx(np.mean(list(by_layer.values())))
        else:
            assert math.isnan(row["dead_frac"])
        assert row["verdict"] == again["verdict"]
        assert row["accuracy_split"] == "validation"


def test_predicted_ratio_is_the_theory_profile(sweep_report):
    from gradscope.analysis import theory
    from gradscope.engine.initializers import weight_variance

    table = sweep_report["table"]
    row = table[(table["activation"] == "sigmoid") & (table["init"] == "standard")
                & (table["depth"] == 8)].iloc[0]
    cfg = {"init": "standard", "width": 16, "depth": 8, "widths": [16] * 8}
    sw2 = theory.weight_var_from_config(cfg)
    prof = theory.predicted_delta_profile("sigmoid", sw2, 8,
                                          out_weight_var=weight_variance("standard", 16, 2, 1.0))
    assert row["predicted_ratio"] == pytest.approx(prof[0])
    assert row["predicted_ratio"] < 1e-3                # deep sigmoid: predicted to vanish


def test_run_table_agrees_with_sweep_summary(sweep_dir, sweep_report):
    s = summarize(sweep_dir).set_index("file")
    t = sweep_report["table"].set_index("file")
    s = s.loc[t.index]
    np.testing.assert_allclose(t["ratio_first"], s["grad_ratio_first"], rtol=1e-6)
    np.testing.assert_allclose(t["ratio_early"], s["vanishing_value"], rtol=1e-6)
    np.testing.assert_allclose(t["accuracy"], s["final_val_accuracy"], rtol=1e-6)


def test_sweep_figures_draw_from_summarize(sweep_dir):
    # the plot functions take sweep.summarize()'s columns too
    s = summarize(sweep_dir)
    g = plots.phase_diagram(summary=s)
    ax = g.axes.flat[0]
    assert ax.get_yscale() == "log"
    assert len([l for l in ax.get_lines() if l.get_gid() == "measured"]) == 4
    g = plots.grid_heatmap(summary=s)
    mesh = next(c for c in g.axes.flat[0].collections if c.get_gid() == "grid-heatmap")
    assert np.asarray(mesh.get_array()).shape == (4, 3)     # activation/init x depth
    g = plots.depth_dead_units(summary=s[s["activation"] == "relu"])
    assert len([l for l in g.axes.flat[0].get_lines() if l.get_gid() == "measured"]) == 2


def test_sampling_is_stable_and_spread():
    rows = []
    for depth in (2, 4, 8):
        for act in ("sigmoid", "relu", "tanh"):
            for init in ("standard", "he"):
                vanish = act == "sigmoid" and depth == 8
                rows.append({"depth": depth, "activation": act, "init": init,
                             "verdict": "vanishing" if vanish else "healthy",
                             "ratio_early": 1e-6 if vanish else 0.5})
    table = pd.DataFrame(rows)
    runs = list(range(len(table)))
    sample = report._sample_runs(runs, table)
    assert sample == sorted(sample) and len(sample) == report.SAMPLE_RUNS
    picked = table.iloc[sample]
    assert set(picked["verdict"]) == {"vanishing", "healthy"}
    assert (picked["depth"] == 8).all()                     # the deepest first
    assert picked[["activation", "init"]].drop_duplicates().shape[0] == len(sample)
    assert report._sample_runs(runs[:5], table.iloc[:5]) == runs[:5]


def test_short_names():
    names = ["moons-d2w16-relu-he-sgd-lr0.1-bs32-s0-steps40.h5",
             "moons-d8w16-sigmoid-standard-sgd-lr0.1-bs32-s0-steps40.h5"]
    short, note = report._short_names(names, width=40)
    assert short == ["moons-d2w16-relu-he-sgd-lr0.1",
                     "moons-d8w16-sigmoid-standard-sgd-lr0.1"]
    assert note == "(run names without their common end -bs32-s0-steps40.h5)"
    assert report._short_names(["a-b", "a-c"], width=40) == (["a-b", "a-c"], "")


# -- remedies -------------------------------------------------------------------------------
def fake(**cfg):
    base = {"dataset": "digits", "depth": 4, "width": 32, "activation": "sigmoid",
            "init": "standard", "optimizer": "sgd", "lr": None,
            "optimizer_hyper": {"lr": 0.01, "momentum": 0.0}, "seed": 0, "batch_size": 32,
            "residual": False, "norm": None, "dropout": 0.0, "clip_norm": None,
            "clip_value": None, "probe_every": 100}
    base.update(cfg)
    return SimpleNamespace(config=base, label=str(cfg))


def test_remedy_groups_identity():
    plain, res = fake(), fake(residual=True, residual_layers=[1, 2, 3])
    bn, other_seed = fake(norm="batch", norm_eps=1e-5), fake(residual=True, seed=1)
    explicit_lr = fake(lr=0.01, clip_norm=1.0, probe_every=10)   # same lr, logged otherwise
    other_lr = fake(lr=0.1, dropout=0.2)
    groups = report.remedy_groups([plain, res, bn, other_seed, explicit_lr, other_lr])
    assert groups == [[plain, res, bn, explicit_lr]]
    # the plain run first, then by the number of remedies on, then in order
    assert report.remedy_groups([res, plain]) == [[plain, res]]
    # a repeated setting is kept once; a lone run is no comparison
    assert report.remedy_groups([plain, fake()]) == []


@pytest.fixture(scope="module")
def remedy_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("remedy")
    paths = []
    for residual in (False, True):
        cfg = TrainConfig(dataset="digits", depth=12, width=32, activation="sigmoid",
                          init="standard", optimizer="sgd", lr=0.1, steps=40,
                          residual=residual)
        paths.append(d / f"{cfg.name()}.h5")
        train(cfg, paths[-1])
    return paths


def test_remedy_page(remedy_pair, tmp_path):
    out = tmp_path / "remedy.pdf"
    r = report.make_report(remedy_pair, out)
    title = "Remedy: --residual (off vs on)"
    assert title in r["titles"]
    assert r["titles"].index(title) == 1                # right after the summary
    assert r["sweep"] is None                           # two runs: no grid
    plain, res = r["diagnoses"]
    assert plain["verdict"] == "vanishing" and res["verdict"] == "healthy"
    assert r["remedy_groups"] == [[p.stem for p in remedy_pair]]
    if PDFTOTEXT:
        text = pdf_text(out)
        assert title in text
        assert "--residual off: vanishing" in text and "--residual on: healthy" in text


def test_remedy_page_panels_share_one_log_scale(remedy_pair):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    runs = [report.load_run(p) for p in remedy_pair]
    pages = report._remedy_pages(report.remedy_groups(runs))
    assert len(pages) == 1
    fig = Figure(figsize=report.PAGE_SIZE, layout="constrained")
    pages[0].draw(fig)
    axes = [a for a in fig.axes if a.get_visible() and a.axison]
    assert len(axes) == 2
    assert all(a.get_yscale() == "log" for a in axes)
    assert axes[0].get_ylim() == axes[1].get_ylim()
    titles = [a.get_title(loc="left") for a in axes]
    assert titles == ["--residual off: vanishing", "--residual on: healthy"]
    # the plain run's panel has the mean-field prediction, the residual one has none
    assert any(l.get_linestyle() == "--" for l in axes[0].get_lines())
    assert not any(l.get_linestyle() == "--" for l in axes[1].get_lines())


def test_sweep_layout_needs_a_grid():
    def table(rows):
        return pd.DataFrame([dict(zip(["depth", "activation", "init", "optimizer"], r),
                                  variant="") for r in rows])

    grid = table([(2, "relu", "he", "sgd"), (4, "relu", "he", "sgd"),
                  (2, "tanh", "he", "sgd"), (4, "tanh", "he", "sgd")])
    layout = report.sweep_layout(grid)
    assert layout == {"x": "depth", "hue": "activation", "style": "init",
                      "col": "optimizer", "row": None, "seeds": 1}
    # no line holds two depths: three unrelated runs
    assert report.sweep_layout(table([(3, "relu", "he", "adam"), (6, "sigmoid", "standard",
                                       "sgd"), (3, "tanh", "xavier", "sgd")])) is None
    # depth alone: a grid only when the runs are a sweep folder's
    depth_only = table([(2, "relu", "he", "sgd"), (4, "relu", "he", "sgd"),
                        (8, "relu", "he", "sgd")])
    assert report.sweep_layout(depth_only) is None
    assert report.sweep_layout(depth_only, from_sweep=True) is not None
    assert report.sweep_layout(grid.iloc[:2]) is None          # fewer than 3 runs
    # other options that differ: one row of panels each
    varied = pd.concat([grid.assign(variant="residual=off"), grid.assign(variant="residual=on")])
    assert report.sweep_layout(varied)["row"] == "variant"
