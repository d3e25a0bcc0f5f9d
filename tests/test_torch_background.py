"""gradscope.torch's background thread: the same numbers as on the training thread, what
changes in place is never read late, failures reach the training thread, close ends it."""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

import gradscope
import gradscope.torch as gst

W = importlib.import_module("gradscope.torch.watch")

COLS = ["grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
        "update_ratio", "act_mean", "act_std", "saturated_frac", "dead_frac",
        "probe_act_mean", "probe_act_std", "probe_saturated_frac"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=64, n_in=8, n_out=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randint(0, n_out, (n,), generator=g)


def _run(make, path, background, opt="adam", steps=5, micro=1):
    model = make()
    x, y = _data()
    o = (torch.optim.Adam(model.parameters(), lr=0.01) if opt == "adam"
         else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True))
    with gst.watch(model, path, optimizer=o, background=background, probe_every=2) as run:
        assert (run._bg is not None) == background
        for _ in range(steps):
            o.zero_grad()
            for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
                loss = nn.functional.cross_entropy(model(xs), ys)
                loss.backward()
            o.step()
            run.log(loss=loss)
    return gradscope.read_layers(path), gradscope.read_steps(path)


def _same(a, b):
    (la, sa), (lb, sb) = a, b
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose(la[COLS].to_numpy(float), lb[COLS].to_numpy(float),
                               rtol=1e-6, atol=0, equal_nan=True)
    np.testing.assert_allclose(sa.grad_norm_total, sb.grad_norm_total, rtol=1e-6)


def _mlp(act=nn.ReLU, widths=(16, 16, 16)):
    def make():
        torch.manual_seed(0)
        layers, a = [], 8
        for w in widths:
            layers += [nn.Linear(a, w), act()]
            a = w
        layers.append(nn.Linear(a, 3))
        return nn.Sequential(*layers)
    return make


@pytest.mark.parametrize("act,opt,micro", [(nn.ReLU, "adam", 1), (nn.Tanh, "sgd", 1),
                                           (nn.Sigmoid, "adam", 2), (nn.GELU, "sgd", 1)])
def test_background_gives_the_training_threads_numbers(tmp_path, act, opt, micro):
    """(the exact tests against the numpy engine run with either, by the machine's cores)"""
    _same(_run(_mlp(act), tmp_path / "bg.h5", True, opt, micro=micro),
          _run(_mlp(act), tmp_path / "fg.h5", False, opt, micro=micro))


class _InPlaceAfter(nn.Module):
    """Layers whose outputs are changed in place after their hooks ran: a functional
    in-place ReLU on a Linear's output, and an in-place scaling of a GELU's output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.act = nn.GELU()

    def forward(self, x):
        x = torch.relu_(self.fc1(x))   # fc1's own output, changed after its forward hook
        x = self.act(self.fc2(x))
        x = x.mul_(2.0)                # GELU keeps its input, so this is legal
        return self.out(x)


def test_outputs_changed_in_place_are_not_read_late(tmp_path):
    bg = _run(_InPlaceAfter, tmp_path / "bg.h5", True)
    fg = _run(_InPlaceAfter, tmp_path / "fg.h5", False)
    _same(bg, fg)
    lay = bg[0]
    # the statistics are those of the tensors as the hooks saw them: fc1's output before
    # the ReLU has negative entries, the GELU's output before the doubling has a mean
    # that a doubled one would not give
    assert (lay[lay.layer == 0].act_mean < 0.5).all()
    assert np.isfinite(lay[lay.layer < 2].act_std).all()


def test_a_background_failure_reaches_the_training_thread(tmp_path, monkeypatch):
    def broken(acc, bufs):
        raise RuntimeError("out of memory in the norms")
    monkeypatch.setattr(W, "_weight_norms", broken)
    model = _mlp()()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "f.h5"
    with pytest.raises(gst.WatchError, match="out of memory in the norms"):
        with gst.watch(model, path, optimizer=opt, background=True) as run:
            for _ in range(3):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                run.log()
    st = gradscope.read_status(path)
    assert st["status"] != "completed" and "out of memory in the norms" in st["message"]


def test_a_failure_in_the_last_step_is_raised_by_close(tmp_path, monkeypatch):
    calls, original = [], W._to_host

    def broken(tensors):  # the step's rows, put together after its post-hook returned
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("late failure")
        return original(tensors)
    monkeypatch.setattr(W, "_to_host", broken)
    model = _mlp()()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "g.h5"
    run = gst.watch(model, path, optimizer=opt, background=True)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with pytest.raises(gst.WatchError, match="late failure"):
        run.close()
    st = gradscope.read_status(path)
    assert st["status"] != "completed" and "late failure" in st["message"]
    assert not run._bg and not any(t.name == "gradscope-torch-stats" and t.is_alive()
                                   for t in threading.enumerate())


def test_close_ends_the_background_thread(tmp_path):
    before = sum(t.name == "gradscope-torch-stats" for t in threading.enumerate())
    _run(_mlp(), tmp_path / "c.h5", True, steps=2)
    assert sum(t.name == "gradscope-torch-stats" for t in threading.enumerate()) == before


def test_background_option_is_checked(tmp_path):
    model = _mlp()()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(gst.WatchError) as e:
        gst.watch(model, tmp_path / "b.h5", optimizer=opt, background="yes")
    assert "\n" not in str(e.value) and "background='yes'" in str(e.value)
    meta = nn.Sequential(nn.Linear(4, 4, device="meta"), nn.ReLU(), nn.Linear(4, 2, device="meta"))
    with pytest.raises(gst.WatchError, match="CPU"):
        gst.watch(meta, tmp_path / "m.h5", optimizer=torch.optim.SGD(meta.parameters()),
                  background=True)
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "m.h5").exists()


def test_automatic_choice_follows_the_free_cores(tmp_path, monkeypatch):
    model = _mlp()()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setattr(W, "_cores", lambda: 1)
    with gst.watch(model, tmp_path / "a.h5", optimizer=opt) as run:
        assert run._bg is None  # torch's one thread takes the only core
    monkeypatch.setattr(W, "_cores", lambda: 4)
    with gst.watch(model, tmp_path / "b.h5", optimizer=opt) as run:
        assert run._bg is not None


@pytest.mark.parametrize("background", [True, False])
def test_tiny_weights_and_gradients_keep_their_size(tmp_path, background):
    """float32 squares below ~1e-45 underflow: such norms are taken again in float64, on
    the background thread from the tensors as the step saw them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.mul_(1e-25)
    w0 = float(model[0].weight.double().norm())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = _data(8, 4, 2)
    path = tmp_path / "t.h5"
    with gst.watch(model, path, optimizer=opt, background=background):
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) * 1e-25).backward()
        g0 = float(model[0].weight.grad.double().norm())
        g1 = float(model[2].weight.grad.double().norm())
        opt.step()
    lay = gradscope.read_layers(path)
    assert w0 > 0 and g0 > 0 and g1 > 0
    assert lay.weight_norm[0] == pytest.approx(w0, rel=1e-5)
    assert lay.grad_norm[0] == pytest.approx(g0, rel=1e-5)
    assert lay.grad_norm[1] == pytest.approx(g1, rel=1e-5)
