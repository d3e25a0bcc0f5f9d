"""gradscope.torch: what the log holds for PyTorch models, and how bad use is refused."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

import gradscope
import gradscope.torch as gst

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP's second thread only waits
    yield
    torch.set_num_threads(n)


def mlp(act=nn.Tanh, widths=(16, 16, 16), n_in=8, n_out=3, seed=0, **kw):
    torch.manual_seed(seed)
    layers, a = [], n_in
    for w in widths:
        layers += [nn.Linear(a, w, **kw), act()]
        a = w
    layers.append(nn.Linear(a, n_out, **kw))
    return nn.Sequential(*layers)


def data(n=32, n_in=8, n_out=3, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g, dtype=dtype), torch.randint(0, n_out, (n,),
                                                                         generator=g)


def fit(model, path, steps=4, opt=None, x=None, y=None, **kw):
    x, y = (x, y) if x is not None else data()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    with gst.watch(model, path, optimizer=opt, **kw) as run:
        for _ in range(steps):
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            run.log(loss=loss)
    return run


def test_import_gradscope_does_not_import_torch():
    code = "import gradscope, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_rows_follow_the_engine_conventions(tmp_path):
    """Row t: weights before update t, its gradients, the update it applied."""
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before, grads, after = [], [], []
    path = tmp_path / "r.h5"
    with gst.watch(model, path, optimizer=opt) as run:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            before.append(model[0].weight.detach().clone())
            grads.append(model[0].weight.grad.clone())
            opt.step()
            after.append(model[0].weight.detach().clone())
            run.log(loss=loss)
    lay = gradscope.read_layers(path)
    l0 = lay[lay.layer == 0].reset_index(drop=True)
    for t in range(3):
        assert l0.weight_norm[t] == pytest.approx(float(before[t].norm()), rel=1e-6)
        assert l0.grad_norm[t] == pytest.approx(float(grads[t].norm()), rel=1e-6)
        assert l0.update_norm[t] == pytest.approx(float((after[t] - before[t]).norm()), rel=1e-5)
    steps = gradscope.read_steps(path)
    assert list(steps.step) == [0, 1, 2]
    assert np.isfinite(steps.loss).all()
    cfg = gradscope.read_config(path)
    assert cfg["layer_names"] == ["0", "2", "4", "6"]
    assert cfg["layer_shapes"] == [[16, 8], [16, 16], [16, 16], [3, 16]]
    assert cfg["activation"] == "tanh" and cfg["depth"] == 3 and cfg["optimizer"] == "sgd"
    assert "mean_field_note" not in cfg  # a plain MLP of one activation
    W0, _ = gradscope.read_weights(path, 0)[0]
    assert W0.shape == (8, 16)  # the engine's (fan_in, fan_out)
    np.testing.assert_allclose(W0, before[0].numpy().T)
    assert gradscope.read_status(path)["status"] == "completed"


def test_delta_norm_is_the_gradient_at_the_module_output(tmp_path):
    model = mlp(nn.ReLU)
    x, y = data()
    zs = []
    def keep(module, args, out):
        out.retain_grad()
        zs.append(out)

    hook = model[2].register_forward_hook(keep)
    path = tmp_path / "d.h5"
    fit(model, path, steps=1, x=x, y=y)
    hook.remove()
    lay = gradscope.read_layers(path)
    assert lay.delta_norm[1] == pytest.approx(float(zs[0].grad.norm()), rel=1e-6)


def test_in_place_activations_give_the_same_log(tmp_path):
    a, b = mlp(nn.ReLU), mlp(lambda: nn.ReLU(inplace=True))
    fit(a, tmp_path / "a.h5")
    fit(b, tmp_path / "b.h5")
    la, lb = gradscope.read_layers(tmp_path / "a.h5"), gradscope.read_layers(tmp_path / "b.h5")
    cols = ["grad_norm", "delta_norm", "act_mean", "act_std", "saturated_frac", "dead_frac"]
    np.testing.assert_allclose(la[cols].to_numpy(float), lb[cols].to_numpy(float),
                               rtol=1e-6, equal_nan=True)
    assert np.isfinite(la.delta_norm).all()


def test_log_every_records_only_those_steps_and_removes_hooks_between(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks_seen = []
    path = tmp_path / "e.h5"
    with gst.watch(model, path, optimizer=opt, log_every=3, probe_every=6) as run:
        for t in range(8):
            hooks_seen.append(len(model[0]._forward_hooks))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.log(loss=loss)
    assert hooks_seen == [1, 0, 0, 1, 0, 0, 1, 0]
    assert list(gradscope.read_steps(path).step) == [0, 3, 6]
    lay = gradscope.read_layers(path)
    assert sorted(lay.step.unique()) == [0, 3, 6]
    probed = lay[np.isfinite(lay.probe_act_mean)].step.unique()
    assert sorted(probed) == [0, 6]
    assert len(model[0]._forward_hooks) == 0 and not opt._optimizer_step_pre_hooks


def test_run_log_before_or_after_the_step_names_the_same_step(tmp_path):
    x, y = data()
    for order in ("after", "before"):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        with gst.watch(model, tmp_path / f"{order}.h5", optimizer=opt) as run:
            for _ in range(3):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                losses.append(float(loss.detach()))
                if order == "before":
                    run.log(loss=loss)
                opt.step()
                if order == "after":
                    run.log(loss=loss)
        np.testing.assert_allclose(gradscope.read_steps(tmp_path / f"{order}.h5").loss, losses,
                                   rtol=1e-6)


def test_half_precision_norms_accumulate_in_float32(tmp_path):
    model = mlp(nn.ReLU, dtype=torch.bfloat16)
    x, y = data(dtype=torch.bfloat16)
    path = tmp_path / "h.h5"
    fit(model, path, x=x, y=y)
    lay = gradscope.read_layers(path)
    ref = float(model[0].weight.detach().float().norm())
    assert np.isfinite(lay[["grad_norm", "delta_norm", "weight_norm"]]).all().all()
    assert np.isfinite(lay[lay.layer < 3].act_mean).all()  # hidden layers
    assert gradscope.read_config(path)["dtype"] == "bfloat16"
    assert lay[lay.layer == 0].weight_norm.iloc[-1] == pytest.approx(ref, rel=0.05)


def test_tiny_gradients_keep_their_size(tmp_path):
    """float32 norms of entries below ~1e-19 underflow; they are taken again in float64."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data(8, 4, 2)
    path = tmp_path / "t.h5"
    with gst.watch(model, path, optimizer=opt):
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) * 1e-25).backward()
        expected = float(model[0].weight.grad.double().norm())
        opt.step()
    g = gradscope.read_layers(path).grad_norm[0]
    assert expected > 0 and g == pytest.approx(expected, rel=1e-5)


def test_cnn_layers_names_and_no_mean_field_overlay(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import digits_cnn
    finally:
        sys.path.pop(0)
    out = {}
    for act in ("sigmoid", "relu"):
        out[act] = tmp_path / f"cnn-{act}.h5"
        digits_cnn.run(act, out[act], steps=4, batch_size=32)
    cfg = gradscope.read_config(out["sigmoid"])
    assert cfg["layer_names"][:2] == ["features.0", "features.2"]
    assert cfg["layer_names"][-1] == "classifier.1"
    assert cfg["layer_types"][0] == "Conv2d" and cfg["layer_shapes"][0] == [16, 1, 3, 3]
    assert "Conv2d" in cfg["mean_field_note"]
    ds, dr = gradscope.diagnose(out["sigmoid"]), gradscope.diagnose(out["relu"])
    assert ds["vanishing"].flagged and not dr["vanishing"].flagged
    assert ds.theory is None
    # per-channel dead flags: one per output channel of each hidden conv
    _, dead = gradscope.read_dead_units(out["relu"])
    assert [d.shape[1] for d in dead] == [16] * 6
    w = gradscope.read_weights(out["relu"], "final")
    assert w[0][0].shape == (16, 1, 3, 3)
    # the remedies of a PyTorch model's log speak of the model, not of `gradscope train`,
    # and carry no mean-field prediction (or gain) where the mean field does not apply
    from gradscope.analysis.remedies import remedies_for_run

    rs = remedies_for_run(cfg, ds, out["sigmoid"])
    assert rs and all(r.torch for r in rs)
    assert all("gradscope train" not in r.command and r.command.startswith("in the model:")
               for r in rs)
    assert all(r.predicted_ratio is None and "init_gain" not in r.change for r in rs)
    assert "nn.ReLU as the hidden activation" in rs[0].summary


@pytest.mark.parametrize("make,why", [
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                           nn.Linear(16, 3)), "one activation"),
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)),
     "Dropout"),
])
def test_mean_field_note_says_why_not(tmp_path, make, why):
    torch.manual_seed(0)
    path = tmp_path / "m.h5"
    fit(make(), path)
    assert why in gradscope.read_config(path)["mean_field_note"]
    assert gradscope.diagnose(path).theory is None


def test_skip_connection_is_no_plain_mlp(tmp_path):
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.act = nn.Tanh()

        def forward(self, x):
            h = self.act(self.a(x))
            h = h + self.act(self.b(h))
            return self.out(h)

    torch.manual_seed(0)
    path = tmp_path / "res.h5"
    fit(Res(), path)
    cfg = gradscope.read_config(path)
    assert "skip" in cfg["mean_field_note"]
    assert cfg["layer_names"] == ["a", "b", "out"]
    assert cfg["layer_activations"] == ["tanh", "tanh", None]


def test_errors_are_one_line_and_write_nothing(tmp_path):
    opt_for = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(gst.WatchError, match="no parameters") as e:
        gst.watch(nn.ReLU(), tmp_path / "a.h5", optimizer=None)
    assert "\n" not in str(e.value) and not (tmp_path / "a.h5").exists()
    existing = tmp_path / "b.h5"
    existing.write_bytes(b"precious")
    model = mlp()
    with pytest.raises(gst.WatchError, match="overwrite=True"):
        gst.watch(model, existing, optimizer=opt_for(model))
    assert existing.read_bytes() == b"precious"
    with pytest.raises(gst.WatchError, match="multiple of log_every"):
        gst.watch(model, tmp_path / "c.h5", optimizer=opt_for(model), log_every=3,
                  probe_every=10)
    with pytest.raises(gst.WatchError, match="optimizer"):
        gst.watch(model, tmp_path / "d.h5")
    run = fit(model, tmp_path / "e.h5", steps=1)
    with pytest.raises(gst.WatchError, match="after the run was closed"):
        run.log(loss=1.0)
    assert not any(p.name in ("a.h5", "c.h5", "d.h5") for p in tmp_path.iterdir())


def test_compiled_model_is_refused_in_one_line(tmp_path):
    model = mlp()
    compiled = torch.compile(model)
    with pytest.raises(gst.WatchError, match="torch.compile") as e:
        gst.watch(compiled, tmp_path / "c.h5", optimizer=torch.optim.SGD(model.parameters()))
    assert "\n" not in str(e.value) and "_orig_mod" in str(e.value)
    assert not (tmp_path / "c.h5").exists()


def test_interrupt_and_exception_leave_a_readable_log(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "i.h5"
    with pytest.raises(KeyboardInterrupt), gst.watch(model, path, optimizer=opt) as run:
        for t in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.log(loss=loss)
            if t == 2:
                raise KeyboardInterrupt
    st = gradscope.read_status(path)
    assert st["status"] == "interrupted" and "step 3" in st["message"]
    assert list(gradscope.read_steps(path).step) == [0, 1, 2]
    path2 = tmp_path / "x.h5"
    with pytest.raises(RuntimeError), gst.watch(mlp(), path2, optimizer=opt):
        raise RuntimeError("boom")
    st = gradscope.read_status(path2)
    assert st["status"] != "completed" and "boom" in st["message"]


def test_divergence_is_recorded(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "nan.h5"
    with gst.watch(model, path, optimizer=opt) as run:
        for t in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) * (math.nan if t == 1 else 1.0)
            loss.backward()
            opt.step()
            run.log(loss=loss)
    st = gradscope.read_status(path)
    assert st["status"] == "diverged" and "step 1" in st["message"]


def test_amp_grad_scaler_skipped_steps_are_flagged(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    path = tmp_path / "amp.h5"
    with gst.watch(model, path, optimizer=opt, scaler=scaler) as run:
        for t in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
            scaler.scale(loss * (math.inf if t == 1 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
            run.log(loss=loss)
    steps = gradscope.read_steps(path)
    assert list(steps.step) == [0, 1, 2, 3]
    assert list(steps.skipped) == [0, 1, 0, 0]
    lay = gradscope.read_layers(path)
    assert sorted(set(lay.step)) == [0, 2, 3]  # no rows of the update that was not applied
    assert np.isfinite(lay.grad_norm).all()
    assert gradscope.read_status(path)["status"] == "completed"
    assert "step" not in vars(scaler)  # the scaler is given back as it was


@pytest.mark.parametrize("background", [False, True])
def test_amp_grad_scaler_logs_the_numbers_of_the_unscaled_loss(tmp_path, background):
    # the same run with and without a GradScaler: scaling the loss by a power of two is
    # exact in float32, so every logged number must be the same, the gradients (unscaled
    # by the scaler before the step) and the deltas (taken in the backward pass of the
    # scaled loss) alike
    def run(path, scaler):
        model = mlp()
        x, y = data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gst.watch(model, path, optimizer=opt, scaler=scaler,
                       background=background) as r:
            for _ in range(3):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                r.log(loss=loss)
        return gradscope.read_layers(path)

    plain = run(tmp_path / "plain.h5", None)
    scaled = run(tmp_path / "scaled.h5", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert len(plain) == len(scaled) == 3 * 4
    for col in ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
                "act_mean", "act_std"):
        np.testing.assert_allclose(scaled[col], plain[col], rtol=1e-6, err_msg=col)
    assert (plain.delta_norm > 0).all()


def test_report_renders_a_torch_log(tmp_path):
    from gradscope.views.report import make_report

    path = tmp_path / "r.h5"
    fit(mlp(nn.Sigmoid, widths=(16,) * 5), path, steps=6)
    pdf = tmp_path / "r.pdf"
    make_report([path], pdf)
    assert pdf.stat().st_size > 10000


KILLED = r'''
import sys, time, torch
from torch import nn
import gradscope.torch as gst
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
with gst.watch(model, sys.argv[1], optimizer=opt) as run:
    for t in range(100000):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        run.log(loss=loss)
        print(t, flush=True)
        time.sleep(0.05)
'''


def test_sigkill_leaves_a_readable_log(tmp_path):
    import signal

    path = tmp_path / "k.h5"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        done = -1
        for line in proc.stdout:
            done = int(line)
            if done >= 30:
                break
        time.sleep(1.5)  # at least one flush after step 30 (flushed at least every second)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert done >= 30
    steps = gradscope.read_steps(path)
    layers = gradscope.read_layers(path)
    assert len(steps) >= 30 and list(steps.step) == list(range(len(steps)))
    assert len(layers) == 2 * len(steps)  # every committed step has both its layer rows
    assert gradscope.read_status(path)["status"] == "running"


def test_run_log_with_log_every_goes_to_the_logged_steps_only(tmp_path):
    model = mlp()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "le.h5"
    with gst.watch(model, path, optimizer=opt, log_every=2, probe_every=2) as run:
        for t in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.log(loss=float(t))  # a marker: the step's own index
    steps = gradscope.read_steps(path)
    assert list(steps.step) == [0, 2, 4] and list(steps.loss) == [0.0, 2.0, 4.0]
