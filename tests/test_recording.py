"""The recorded step's batched statistics (engine.stats.FlatLayout, engine.mlp.StepBuffers,
the writer's append_block) against the single-array functions and float64 numpy."""

import math
import threading

import numpy as np
import pytest

from gradscope.engine.activations import ACTIVATIONS
from gradscope.engine.losses import softmax_cross_entropy
from gradscope.engine.mlp import StepBuffers, backward, forward, init_params
from gradscope.engine.stats import FlatLayout, mean_std, norm, saturated_fraction
from gradscope.record.probes import STEP_METRICS, step_block, step_metrics


def _ref_norm(a):
    return float(np.sqrt(np.sum(np.asarray(a, dtype=np.float64) ** 2)))


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_layout_norms_against_float64(rng, dtype):
    shapes = [(40, 30), (30,), (30, 30), (30,), (30, 30), (30,), (30, 3), (3,), (0,)]
    lay = FlatLayout(shapes, dtype, copies=2, row=256)
    flat = lay.empty()
    scales = [1.0, 1e-25, 1e-3, 1e-40, 1e15, 0.0, 1e25, 2.0, 1.0]
    for k in range(2):
        for v, s in zip(lay.views(flat, k), scales):
            v[...] = (rng.standard_normal(v.shape) * s * (k + 1)).astype(dtype)
    got = lay.norms(flat)
    assert got.shape == (2, len(shapes)) and got.dtype == np.float64
    for k in range(2):
        for j, v in enumerate(lay.views(flat, k)):
            assert v.shape == shapes[j] and np.shares_memory(v, flat) or v.size == 0
            ref = _ref_norm(v)
            # vanishing (1e-25, 1e-40: underflowed float32 squares), large, zero, empty
            assert got[k, j] == pytest.approx(ref, rel=1e-6, abs=0.0), (k, j)
            assert got[k, j] == pytest.approx(norm(v), rel=1e-6)
    # the padding between arrays stays zero whatever the views hold
    covered = np.zeros(lay.size, bool)
    for k in range(2):
        for o, size in zip(lay.offsets[k].tolist(), lay.sizes):
            covered[o : o + size] = True
    assert not flat[~covered].any()


def test_flat_layout_norms_of_non_finite_arrays():
    lay = FlatLayout([(3,), (2, 2)], np.float32)
    flat = lay.empty()
    a, b = lay.views(flat)
    a[:] = [1.0, np.nan, 0.0]
    b[:] = [[np.inf, 1.0], [0.0, 0.0]]
    got = lay.norms(flat)
    assert math.isnan(got[0, 0]) and got[0, 1] == math.inf


def _pass(params, X, y, act, buffers=None):
    out, cache = forward(params, X, act, measure=True, buffers=buffers)
    _, dout = softmax_cross_entropy(out, y)
    return cache, backward(params, cache, dout, act, measure=True, buffers=buffers), dout


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "elu", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_buffers_measure_the_single_array_statistics(rng, name, dtype):
    act = ACTIVATIONS[name]
    params = init_params([12, 16, 16, 16, 4], "xavier", rng, gain=2.0, dtype=dtype)
    params[3][:] = 3.0  # a layer whose mean dwarfs its spread for sigmoid (careful path)
    X = rng.normal(size=(20, 12)).astype(dtype)
    y = rng.integers(0, 4, 20)
    buf = StepBuffers(params, 20, act)
    cache, back, dout = _pass(params, X, y, act, buf)
    ref_cache, ref_back, _ = _pass(params, X, y, act)
    # the passes give the same numbers with and without the buffers
    for g, r in zip(back.grads, ref_back.grads):
        np.testing.assert_array_equal(g, r)
    for l in range(3):
        np.testing.assert_array_equal(cache.hidden(l), ref_cache.hidden(l))
        np.testing.assert_array_equal(back.dphi[l], ref_back.dphi[l])
    mean, std = back.act_stats
    for l in range(4):
        assert back.delta_norms[l] == pytest.approx(_ref_norm(ref_back.deltas[l]), rel=1e-6)
    for l in range(3):
        a = ref_cache.hidden(l).astype(np.float64)
        assert mean[l] == pytest.approx(a.mean(), rel=1e-6, abs=1e-7)
        assert std[l] == pytest.approx(a.std(), rel=1e-4)
        assert std[l] == pytest.approx(mean_std(ref_cache.hidden(l))[1], rel=1e-5)
        assert back.saturated[l] == saturated_fraction(ref_back.dphi[l], act)
    m = step_metrics(params, cache, back, None, act, [norm(g) for g in back.grads],
                     weight_norms=[norm(p) for p in params])
    ref = step_metrics(params, ref_cache, ref_back, None, act)
    for c in STEP_METRICS:
        np.testing.assert_allclose(m[c], ref[c], rtol=1e-5, atol=1e-12, equal_nan=True)


def test_step_buffers_vanishing_deltas_keep_their_norm(rng):
    act = ACTIVATIONS["tanh"]
    params = init_params([6, 8, 8, 3], "he", rng, dtype=np.float32)
    params[4] *= np.float32(1e-22)  # the output layer's weights: the hidden deltas vanish
    X = rng.normal(size=(5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    buf = StepBuffers(params, 5, act)
    _, back, _ = _pass(params, X, y, act, buf)
    for l in range(2):
        ref = _ref_norm(back.deltas[l])
        assert 0 < ref < 1e-19
        assert back.delta_norms[l] == pytest.approx(ref, rel=1e-6)


def test_step_block_assembles_as_the_per_layer_path(rng):
    act = ACTIVATIONS["relu"]
    params = init_params([5, 7, 7, 2], "he", rng, dtype=np.float64)
    params[2][:] = 0.0  # a zero weight norm: the update ratio is inf
    X = rng.normal(size=(9, 5))
    y = rng.integers(0, 2, 9)
    buf = StepBuffers(params, 9, act)
    cache, back, _ = _pass(params, X, y, act, buf)
    updates = [rng.normal(size=p.shape) for p in params]
    gn = np.array([norm(g) for g in back.grads])
    wn = np.array([norm(p) for p in params])
    un = np.array([norm(u) for u in updates])
    fast = step_block(params, cache, back, updates, act, gn, weight_norms=wn, update_norms=un)
    slow = step_block(params, cache, back._replace(act_stats=None), updates, act, list(gn),
                      weight_norms=list(wn), update_norms=list(un))
    np.testing.assert_allclose(fast, slow, rtol=1e-12, equal_nan=True)
    assert fast[1, 5] == math.inf
    assert np.isnan(fast[2, 6:]).all()


def test_append_block_writes_what_append_writes(tmp_path):
    import gradscope
    from gradscope.record.probes import histogram_edges
    from gradscope.record.writer import LogWriter
    from gradscope.training.loop import TrainConfig, prepare

    prep = prepare(TrainConfig(dataset="moons", depth=2, width=4, steps=3))
    params = init_params(prep.resolved["sizes"], "he", np.random.default_rng(0))
    rng = np.random.default_rng(1)
    blocks = [rng.normal(size=(3, len(STEP_METRICS))) for _ in range(3)]
    for name, block_api in (("a.h5", True), ("b.h5", False)):
        w = LogWriter(tmp_path / name, prep.resolved, params,
                      histogram_edges(ACTIVATIONS["relu"]))
        for step, block in enumerate(blocks):
            w.append("steps", step=step, epoch=0, loss=1.0, accuracy=0.5, lr=0.1,
                     grad_norm_total=1.0, time=0.0)
            if block_api:
                w.append_block("layers", 3, STEP_METRICS, block, step=step, layer=np.arange(3))
            else:
                w.append("layers", 3, step=step, layer=np.arange(3),
                         **dict(zip(STEP_METRICS, block.T)))
            w.end_step()
        w.close("completed")
    a, b = gradscope.read_layers(tmp_path / "a.h5"), gradscope.read_layers(tmp_path / "b.h5")
    assert len(a) == 9
    np.testing.assert_array_equal(a[list(STEP_METRICS)].to_numpy(), np.concatenate(blocks))
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


# -- the probe pass on a worker thread (record.probes.ProbeThread) ------------------------------

_PARTS = ("steps", "layers", "epochs", "probes", "probe_units", "snapshots")


def _log_contents(path):
    """Every committed value of a log as bytes (all parts but the wall-clock ``time``
    columns, the initial and final parameters, the status)."""
    from gradscope.reading.readers import open_log, read_columns

    out = {}
    with open_log(path) as f:
        for part in _PARTS:
            if part in f:
                for name, col in read_columns(f, part).items():
                    if name != "time":
                        out[part, name] = (col.dtype.str, col.shape, col.tobytes())
        for which in ("initial", "final"):
            for k, ds in f[f"params/{which}"].items():
                a = ds[()]
                out[which, k] = (a.dtype.str, a.shape, a.tobytes())
        out["status"] = (bytes(f["status"][()]), bytes(f["status_message"][()]))
    return out


def _train_both(tmp_path, monkeypatch, progress=None, row_batch=16, **kw):
    """The same run step by step (the probe passes in the training thread, each step's rows
    appended at once) and with the probe passes on the worker thread and the rows appended
    ``row_batch`` steps at a time; returns both logs' contents, the results, and the steps
    whose passes went to the worker."""
    from gradscope.record.probes import ProbeThread
    from gradscope.training import loop

    submitted = []
    submit = ProbeThread.submit

    def counting(self, step, *a, **k):
        submitted.append(step)
        return submit(self, step, *a, **k)

    monkeypatch.setattr(ProbeThread, "submit", counting)
    cfg = dict(dataset="digits", depth=3, width=24, epochs=2, batch_size=50, val_fraction=0.1)
    cfg.update(kw)
    got = []
    for bg in (False, True):
        monkeypatch.setattr(loop, "background_probes", bg)
        monkeypatch.setattr(loop, "ROW_BATCH", row_batch if bg else 1)
        out = tmp_path / f"bg{int(bg)}.h5"
        try:
            res = loop.train(loop.TrainConfig(**cfg), out, progress=progress)
        except RuntimeError as e:
            res = e
        got.append((_log_contents(out), res))
    (sync, r0), (bg, r1) = got
    return sync, bg, r0, r1, submitted


@pytest.mark.parametrize("kw", [
    dict(probe_every=10),                                             # ReLU, float32, Adam
    dict(activation="tanh", dtype="float64", optimizer="sgd", lr=0.05, probe_every=7,
         snapshot_every=20),
    dict(activation="sigmoid", init_gain=4.0, optimizer="rmsprop", log_every=3, probe_every=3),
    dict(norm="batch", dropout=0.2, probe_every=10),                  # the remedies' passes
    dict(residual=True, activation="elu", optimizer="nadam", probe_every=5, log_every=5),
    dict(activation="relu", init="he", init_gain=2.0, lr=10.0, optimizer="sgd", probe_every=1),
])
@pytest.mark.parametrize("row_batch", [16, 5])
def test_background_probes_and_batched_rows_log_what_step_by_step_logs(tmp_path, monkeypatch,
                                                                        kw, row_batch):
    sync, bg, r0, r1, submitted = _train_both(tmp_path, monkeypatch, row_batch=row_batch, **kw)
    assert submitted, "no probe pass went to the worker thread"
    assert sync.keys() == bg.keys()
    assert [k for k in sync if sync[k] != bg[k]] == []
    assert (r0.status, r0.steps, r0.message) == (r1.status, r1.steps, r1.message)
    n_probes = len(np.frombuffer(sync["probe_units", "step"][2], dtype=np.int64))
    assert n_probes >= 3
    if kw.get("lr") == 10.0:  # the diverged step is probed, after the pass in flight
        assert r1.status == "diverged"


def test_an_interrupted_run_keeps_the_probe_pass_in_flight_and_the_rows_kept(tmp_path,
                                                                            monkeypatch):
    # interrupted two steps after a probe step: that step's probe rows, and the rows of
    # the steps kept for the next batch, are in the log as when written step by step
    from gradscope.record.probes import ProbeThread

    def progress(step, total, loss):
        if step == 12:
            raise KeyboardInterrupt

    # as if the pass were still running when the run stops (its rows are taken at close)
    monkeypatch.setattr(ProbeThread, "ready", lambda self: False)
    sync, bg, r0, r1, submitted = _train_both(tmp_path, monkeypatch, progress=progress,
                                              probe_every=10)
    assert r0.status == r1.status == "interrupted"
    assert submitted == [0, 10]
    assert [k for k in sync if sync[k] != bg[k]] == []
    steps = np.frombuffer(bg["probe_units", "step"][2], dtype=np.int64)
    assert steps.tolist() == [0, 10]


def test_a_failing_probe_pass_fails_the_run_in_the_training_thread(tmp_path, monkeypatch):
    from gradscope import read_status
    from gradscope.record import probes
    from gradscope.training import loop

    real = probes.probe_metrics

    def failing(params, X, *a, **k):
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("no room for the probe set")
        return real(params, X, *a, **k)

    monkeypatch.setattr(probes, "probe_metrics", failing)
    monkeypatch.setattr(loop, "background_probes", True)
    out = tmp_path / "failed.h5"
    with pytest.raises(MemoryError, match="no room for the probe set"):
        loop.train(loop.TrainConfig(dataset="digits", depth=2, width=16, steps=60,
                                    probe_every=10), out)
    st = read_status(out)
    assert st["status"] == "failed"
    assert "out of memory" in st["message"] and "no room for the probe set" in st["message"]
    # the first pass (step 0) failed: no probe rows; the steps before the failure surfaced
    log = _log_contents(out)
    assert log["probe_units", "step"][1] == (0,)
    assert log["steps", "step"][1][0] <= 10  # surfaced by the next probe step at the latest
    assert not [t for t in threading.enumerate() if t.name.startswith("gradscope-probe")]


def test_probes_go_to_the_worker_only_for_small_nets_with_a_core_to_spare(monkeypatch):
    from gradscope.training import loop

    monkeypatch.setattr(loop, "background_probes", None)
    monkeypatch.setattr(loop, "usable_cores", lambda: 2)
    big = 1024 * 64  # the probe pass of an 8 x 64 net: its arrays are large enough
    assert loop.probes_in_background(small=True, inline_optimizer=True, layer_size=big)
    assert not loop.probes_in_background(small=True, inline_optimizer=True,
                                         layer_size=1024 * 32)  # 20 x 32: too many calls
    assert not loop.probes_in_background(small=False, inline_optimizer=True, layer_size=big)
    assert not loop.probes_in_background(small=True, inline_optimizer=False, layer_size=big)
    monkeypatch.setattr(loop, "usable_cores", lambda: 1)
    assert not loop.probes_in_background(small=True, inline_optimizer=True, layer_size=big)
    monkeypatch.setattr(loop, "background_probes", True)
    assert loop.probes_in_background(small=False, inline_optimizer=False, layer_size=1)


@pytest.mark.parametrize("log_every", [1, 3])
def test_rows_wait_at_most_row_batch_steps(tmp_path, monkeypatch, log_every):
    from gradscope.record.writer import LogWriter
    from gradscope.training import loop

    batches = []
    real = LogWriter.append_block

    def spy(self, table, n, names, block, **values):
        if table == "steps":
            batches.append(np.atleast_1d(values["step"]).tolist())
        return real(self, table, n, names, block, **values)

    monkeypatch.setattr(LogWriter, "append_block", spy)
    monkeypatch.setattr(loop, "ROW_BATCH", 16)
    r = loop.train(loop.TrainConfig(dataset="digits", depth=3, width=16, epochs=2,
                                    batch_size=50, log_every=log_every), tmp_path / "run.h5")
    from gradscope import read_steps

    expected = sorted(set(range(0, r.steps, log_every)) | {r.steps - 1})
    assert read_steps(tmp_path / "run.h5")["step"].tolist() == expected
    # (an epoch's short last batch is measured without the stacked buffers: appended alone)
    logged = [s for b in batches for s in b]
    assert logged == sorted(logged) and len(logged) >= len(expected) - 2
    assert max(len(b) for b in batches) == -(-16 // log_every)
    assert all(b[-1] - b[0] <= 15 for b in batches)


@pytest.mark.parametrize("bg", [False, True])
def test_a_probe_steps_rows_never_reach_the_log_before_its_step_rows(tmp_path, monkeypatch, bg):
    """At every commit, each probe step in the log has its steps and layer rows there too
    (a reader of a killed run's log must never see a probe step past the last step)."""
    from gradscope.record.writer import LogWriter
    from gradscope.training import loop

    appended = {"steps": [], "probes": []}
    real_append, real_block, real_end = LogWriter.append, LogWriter.append_block, LogWriter.end_step

    def note(table, values):
        if table in appended:
            appended[table].extend(np.atleast_1d(values["step"]).tolist())

    def append(self, table, n=1, **values):
        note(table, values)
        return real_append(self, table, n, **values)

    def append_block(self, table, n, names, block, **values):
        note(table, values)
        return real_block(self, table, n, names, block, **values)

    bad = []

    def end_step(self):
        if appended["probes"] and max(appended["probes"]) > max(appended["steps"], default=-1):
            bad.append((max(appended["probes"]), max(appended["steps"], default=-1)))
        return real_end(self)

    monkeypatch.setattr(LogWriter, "append", append)
    monkeypatch.setattr(LogWriter, "append_block", append_block)
    monkeypatch.setattr(LogWriter, "end_step", end_step)
    monkeypatch.setattr(loop, "background_probes", bg)
    monkeypatch.setattr(loop, "ROW_BATCH", 16)
    loop.train(loop.TrainConfig(dataset="digits", depth=3, width=16, epochs=2, batch_size=50,
                                probe_every=10), tmp_path / "run.h5")
    assert len(set(appended["probes"])) >= 5
    assert bad == []


# -- the optimizer over the flat layout's copies as wholes (training.loop) --------------------

def test_flat_layout_whole_and_norms_of_some_copies(rng):
    lay = FlatLayout([(7, 5), (5,), (5, 3), (3,)], np.float32, copies=3, row=16)
    flat = lay.empty()
    for k in range(3):
        for v in lay.views(flat, k):
            v[...] = rng.standard_normal(v.shape)
    every = lay.norms(flat)
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)):
        assert np.array_equal(lay.norms(flat, (a, b)), every[a:b]), (a, b)
    for k in range(3):
        whole = lay.whole(flat, k)
        assert whole.ndim == 1 and whole.size * 3 == flat.size
        for v in lay.views(flat, k):  # every array of copy k lies inside its whole
            assert np.shares_memory(v, whole)
            assert all(not np.shares_memory(v, lay.whole(flat, j)) for j in range(3) if j != k)
    bad = lay.views(flat, 2)[2]
    bad[0, 0] = np.inf  # a non-finite array is retaken alone, in its own copy's row
    got = lay.norms(flat, (2, 3))
    assert got[0, 2] == math.inf and np.array_equal(got[0, [0, 1, 3]], every[2, [0, 1, 3]])


def _per_array_and_flat(tmp_path, monkeypatch, **kw):
    """One run trained twice: the optimizer array by array (the flat layout switched off,
    the path of nets it does not serve, itself checked against torch.optim) and over the
    flat layout's copies as wholes; returns both logs' contents."""
    from gradscope.engine import mlp
    from gradscope.training import loop

    cfg = dict(dataset="digits", depth=3, width=24, epochs=2, batch_size=50, val_fraction=0.1,
               probe_every=10)
    cfg.update(kw)
    got = []
    for flat in (False, True):
        if not flat:
            monkeypatch.setattr(mlp.StepBuffers, "fit", staticmethod(lambda p, b: False))
        else:
            monkeypatch.undo()
        monkeypatch.setattr(loop, "background_probes", False)
        out = tmp_path / f"flat{int(flat)}.h5"
        res = loop.train(loop.TrainConfig(**cfg), out)
        got.append((_log_contents(out), res))
    return got


@pytest.mark.parametrize("kw", [
    *[dict(optimizer=o) for o in ("sgd", "momentum", "nesterov", "adagrad", "adadelta",
                                  "rmsprop", "rprop", "adam", "amsgrad", "nadam", "adamax",
                                  "adamw")],
    dict(activation="tanh", dtype="float64", optimizer="sgd", lr=0.05, weight_decay=0.01),
    dict(optimizer="adam", weight_decay=0.01, batch_size=37),  # a shorter last batch
    dict(optimizer="sgd", clip_value=0.01),
    dict(optimizer="adamw", clip_norm=0.5, log_every=3, probe_every=3),
    dict(optimizer="sgd", lr=50.0),  # diverges
])
def test_the_flat_optimizer_step_trains_as_the_per_array_step(tmp_path, monkeypatch, kw):
    from gradscope.engine.optimizers import OPTIMIZERS

    assert set(OPTIMIZERS) <= {"sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop",
                               "rprop", "adam", "amsgrad", "nadam", "adamax", "adamw"}, \
        "a new optimizer: add it here (the flat step needs elementwise update rules)"
    (per, r0), (flat, r1) = _per_array_and_flat(tmp_path, monkeypatch, **kw)
    assert (r0.status, r0.steps) == (r1.status, r1.steps)
    assert per.keys() == flat.keys()
    # the norms come from the flat layout's row sums (the gradients' unless clipping needs
    # them as clip_grad_norm_ takes them), the per-array path's from one dot product per
    # array: equal to rounding. Every other value, the parameters first, bit for bit
    rounding = {("layers", "grad_norm"), ("layers", "bias_grad_norm"),
                ("steps", "grad_norm_total"), ("layers", "weight_norm"),
                ("layers", "update_norm"), ("layers", "update_ratio")}
    exact = [k for k in per if k not in rounding]
    assert ("final", "W_0") in exact or any(k[0] == "final" for k in exact)
    assert [k for k in exact if per[k] != flat[k]] == []
    if "clip_norm" in kw:  # the clipping's norms are the per-array path's
        assert per["steps", "grad_norm_total"] == flat["steps", "grad_norm_total"]
    tol = 1e-12 if kw.get("dtype") == "float64" else 3e-7
    for part, name in rounding:
        a = np.frombuffer(per[part, name][2], dtype=np.float64)
        b = np.frombuffer(flat[part, name][2], dtype=np.float64)
        assert a.size > 0
        np.testing.assert_allclose(b, a, rtol=tol, err_msg=name)
