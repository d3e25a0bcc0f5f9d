"""gradscope.torch's numbers in training loops that change the gradients between backward()
and step() (clipping, a GradScaler given or not, fused optimizers) or compute them inside
step() (closures): each checked against the same run done another way, against torch
computed by hand, or against the numpy engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

import gradscope
import gradscope.torch as gst
from gradscope.training.loop import TrainConfig, prepare, train

COLS = ["grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm",
        "update_ratio", "act_mean", "act_std", "saturated_frac"]
BOTH = pytest.mark.parametrize("background", [False, True], ids=["one-thread", "background"])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: OpenMP's second thread only waits
    yield
    torch.set_num_threads(n)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def _data(n=32, scale=1.0):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g) * scale, torch.randint(0, 3, (n,), generator=g)


def _norm(t) -> float:
    return float(torch.linalg.vector_norm(t.detach().double()))


def _same_logs(a, b, rtol=1e-6):
    la, lb = gradscope.read_layers(a), gradscope.read_layers(b)
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose(la[COLS].to_numpy(float), lb[COLS].to_numpy(float), rtol=rtol,
                               atol=1e-12, equal_nan=True)
    sa, sb = gradscope.read_steps(a), gradscope.read_steps(b)
    np.testing.assert_allclose(sa.grad_norm_total, sb.grad_norm_total, rtol=rtol)
    assert list(sa.clipped) == list(sb.clipped)


@BOTH
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "grad-scaler"])
def test_clipping_logs_the_gradients_before_clipping(tmp_path, background, amp):
    # as the engine's log (docs/log-format.md): grad_norm and grad_norm_total of the
    # gradient before clip_grad_norm_, `clipped` where it changed it, the update that
    # the clipped gradient made
    model = _mlp()
    x, y = _data(scale=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp else None
    layers = [model[0], model[2], model[4]]
    raw, total, used, before, after = [], [], [], [], []
    path = tmp_path / "clip.h5"
    with gst.watch(model, path, optimizer=opt, scaler=scaler, background=background) as run:
        for t in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if amp:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            raw.append([_norm(m.weight.grad) for m in layers])
            total.append(math.sqrt(sum(_norm(p.grad) ** 2 for p in model.parameters())))
            # clipping fires at steps 0 and 2 only
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05 if t != 1 else 1e6)
            used.append([_norm(m.weight.grad) for m in layers])
            before.append([m.weight.detach().clone() for m in layers])
            if amp:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            after.append([m.weight.detach().clone() for m in layers])
            run.log(loss=loss)
    lay, steps = gradscope.read_layers(path), gradscope.read_steps(path)
    np.testing.assert_allclose(lay.grad_norm.to_numpy().reshape(3, 3), raw, rtol=1e-6)
    np.testing.assert_allclose(steps.grad_norm_total, total, rtol=1e-6)
    assert list(steps.clipped) == [1, 0, 1]
    assert used[0][0] < 0.2 * raw[0][0]  # the clipping did change the gradients
    upd = [[_norm(a - b) for a, b in zip(aa, bb)] for aa, bb in zip(after, before)]
    np.testing.assert_allclose(lay.update_norm.to_numpy().reshape(3, 3), upd, rtol=1e-5)
    np.testing.assert_allclose(lay.weight_norm.to_numpy().reshape(3, 3),
                               [[_norm(w) for w in ww] for ww in before], rtol=1e-6)


def test_clipping_agrees_with_the_engine(tmp_path):
    # the numpy engine's --clip-norm and torch's clip_grad_norm_ on the same MLP, the same
    # initial weights, full-batch steps in float64: the same gradients, clipped flags,
    # updates and weights
    cfg = TrainConfig(dataset="digits", depth=3, width=16, activation="tanh", init="xavier",
                      optimizer="sgd", lr=0.5, batch_size="full", steps=4, dtype="float64",
                      seed=3, clip_norm=0.3)
    eng, tor = tmp_path / "engine.h5", tmp_path / "torch.h5"
    train(cfg, eng)
    prep = prepare(cfg)
    mods = []
    weights = gradscope.read_weights(eng, step=0)
    for i, (W, b) in enumerate(weights):
        lin = nn.Linear(W.shape[0], W.shape[1], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
            lin.bias.copy_(torch.from_numpy(b))
        mods += [lin] + ([nn.Tanh()] if i < len(weights) - 1 else [])
    model = nn.Sequential(*mods)
    X, y = torch.from_numpy(prep.X), torch.from_numpy(prep.y).long()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    with gst.watch(model, tor, optimizer=opt) as run:
        for _ in range(cfg.steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            run.log(loss=loss)
    se, st = gradscope.read_steps(eng), gradscope.read_steps(tor)
    assert se.clipped.sum() >= 2  # the clipping fired
    assert list(st.clipped) == list(se.clipped)
    np.testing.assert_allclose(st.grad_norm_total, se.grad_norm_total, rtol=1e-9)
    np.testing.assert_allclose(st.loss, se.loss, rtol=1e-9)
    le, lt = gradscope.read_layers(eng), gradscope.read_layers(tor)
    for col in ("grad_norm", "bias_grad_norm", "delta_norm", "weight_norm", "update_norm"):
        np.testing.assert_allclose(lt[col], le[col], rtol=1e-9, err_msg=col)


def _plain_and_closure(path, background, closure, steps=3):
    model = _mlp()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with gst.watch(model, path, optimizer=opt, background=background, probe_every=2) as run:
        for _ in range(steps):
            def step_closure():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            if closure:
                loss = opt.step(step_closure)
            else:
                loss = step_closure()
                opt.step()
            run.log(loss=loss)


@BOTH
def test_step_with_a_closure_logs_the_step_it_takes(tmp_path, background):
    # optimizer.step(closure) computes the gradients inside step(), after the optimizer's
    # pre-hook: the same numbers as the loop that calls backward() before step()
    _plain_and_closure(tmp_path / "plain.h5", background, closure=False)
    _plain_and_closure(tmp_path / "closure.h5", background, closure=True)
    _same_logs(tmp_path / "plain.h5", tmp_path / "closure.h5")
    pl, cl = gradscope.read_layers(tmp_path / "plain.h5"), gradscope.read_layers(
        tmp_path / "closure.h5")
    np.testing.assert_allclose(cl.dead_frac, pl.dead_frac, equal_nan=True)
    np.testing.assert_allclose(cl.probe_act_mean, pl.probe_act_mean, equal_nan=True)


@BOTH
def test_lbfgs_logs_its_first_evaluation(tmp_path, background):
    # LBFGS evaluates the closure several times per step, at other weights after the first:
    # the row holds the weights before the step, the gradient and activations of the first
    # evaluation (at those weights), and the update the whole step made
    model = _mlp()
    x, y = _data()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    first = []
    outs = []
    model[1].register_forward_hook(lambda m, a, out: outs.append(out.detach().double()))
    path = tmp_path / "lbfgs.h5"
    before, after = [], []
    with gst.watch(model, path, optimizer=opt, background=background) as run:
        for _ in range(3):
            calls = []

            def closure(calls=calls):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                calls.append(_norm(model[0].weight.grad))
                return loss
            outs.clear()
            before.append(model[0].weight.detach().clone())
            loss = opt.step(closure)
            after.append(model[0].weight.detach().clone())
            assert len(calls) > 1  # several evaluations in one step
            first.append((calls[0], float(outs[0].mean()), float(outs[0].std(unbiased=False))))
            run.log(loss=loss)
    lay = gradscope.read_layers(path)
    l0 = lay[lay.layer == 0]
    np.testing.assert_allclose(l0.grad_norm, [f[0] for f in first], rtol=1e-6)
    np.testing.assert_allclose(l0.act_mean, [f[1] for f in first], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(l0.act_std, [f[2] for f in first], rtol=1e-5)
    np.testing.assert_allclose(l0.weight_norm, [_norm(w) for w in before], rtol=1e-6)
    np.testing.assert_allclose(l0.update_norm, [_norm(a - b) for a, b in zip(after, before)],
                               rtol=1e-5)


def _amp_run(path, background, scaler=None, given=True, fused=False, steps=3):
    model = _mlp()
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, fused=fused)
    with gst.watch(model, path, optimizer=opt, scaler=scaler if given else None,
                   background=background) as run:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            run.log(loss=loss)


@BOTH
def test_a_grad_scaler_not_given_is_found_from_its_unscaling(tmp_path, background):
    # a GradScaler in use but not passed as `scaler`: its unscale_ (inside scaler.step)
    # divides the gradients by its scale without moving their version counters; the
    # gradients and deltas are still those of the unscaled loss
    _amp_run(tmp_path / "plain.h5", background)
    _amp_run(tmp_path / "unseen.h5", background, torch.amp.GradScaler("cpu", init_scale=2.0**10),
             given=False)
    _same_logs(tmp_path / "plain.h5", tmp_path / "unseen.h5")


@BOTH
def test_fused_optimizer_with_a_grad_scaler(tmp_path, background):
    # a fused optimizer unscales the gradients inside its step: the gradients of the
    # backward pass divided by the scaler's scale, as for other optimizers
    _amp_run(tmp_path / "plain.h5", background)
    _amp_run(tmp_path / "fused.h5", background, torch.amp.GradScaler("cpu", init_scale=2.0**10),
             fused=True)
    _same_logs(tmp_path / "plain.h5", tmp_path / "fused.h5")


class _Branch(nn.Module):
    """A layer (``extra``, registered second) that the first step's forward pass skips."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.extra, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.act = nn.Tanh()
        self.use_extra = False

    def forward(self, x):
        h = self.act(self.inp(x))
        if self.use_extra:
            h = self.act(self.extra(h))
        return self.out(h)


@BOTH
def test_layers_skipped_by_the_first_pass_are_numbered_last(tmp_path, background):
    # layers are numbered in the order the first recorded forward pass calls them; one it
    # does not call comes after the others (taken as the output layer: no activation
    # statistics), and each row holds its own layer's numbers
    model = _Branch()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    path = tmp_path / "branch.h5"
    with gst.watch(model, path, optimizer=opt, background=background) as run:
        for t in range(4):
            model.use_extra = t % 2 == 1
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            grads.append([_norm(m.weight.grad) if m.weight.grad is not None else math.nan
                          for m in (model.inp, model.out, model.extra)])
            opt.step()
            run.log(loss=loss)
    assert gradscope.read_config(path)["layer_names"] == ["inp", "out", "extra"]
    lay = gradscope.read_layers(path)
    np.testing.assert_allclose(lay.grad_norm.to_numpy().reshape(4, 3), grads, rtol=1e-6)
    extra = lay[lay.layer == 2]
    assert extra.act_mean.isna().all()  # taken as the output layer
    assert list(extra.delta_norm.isna()) == [True, False, True, False]
    assert gradscope.read_status(path)["status"] == "completed"  # a layer without a gradient is no divergence


class _Embed(nn.Module):
    def __init__(self, sparse):
        super().__init__()
        torch.manual_seed(0)
        # float64: the sparse and dense updates round differently in float32
        self.emb = nn.Embedding(20, 8, sparse=sparse, dtype=torch.float64)
        self.fc, self.act = nn.Linear(8, 3, dtype=torch.float64), nn.Tanh()

    def forward(self, i):
        return self.fc(self.act(self.emb(i)))


@BOTH
def test_sparse_gradients_have_the_dense_ones_norms(tmp_path, background):
    # nn.Embedding(sparse=True): torch has no norm of a sparse tensor (recording used to stop
    # the training with NotImplementedError); the same numbers as the dense embedding's
    g = torch.Generator().manual_seed(1)
    idx, y = torch.randint(0, 20, (32,), generator=g), torch.randint(0, 3, (32,), generator=g)
    for sparse in (False, True):
        model = _Embed(sparse)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gst.watch(model, tmp_path / f"{sparse}.h5", optimizer=opt,
                       background=background) as run:
            for _ in range(3):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(idx), y)
                loss.backward()
                opt.step()
                run.log(loss=loss)
    _same_logs(tmp_path / "False.h5", tmp_path / "True.h5")


class _TiedLM(nn.Module):
    """An embedding whose weight is also the output layer's (weight tying)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mid, self.act = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Tanh()
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, i):
        return self.out(self.act(self.mid(self.emb(i))))


@BOTH
def test_a_tied_weight_counts_once_in_the_global_norm(tmp_path, background):
    # two layers' rows hold the shared weight's gradient; grad_norm_total is the global
    # norm of the optimizer's parameters, each once (as clip_grad_norm_ returns it)
    g = torch.Generator().manual_seed(1)
    idx, y = torch.randint(0, 20, (32,), generator=g), torch.randint(0, 20, (32,), generator=g)
    model = _TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    totals, tied = [], []
    path = tmp_path / "tied.h5"
    with gst.watch(model, path, optimizer=opt, background=background) as run:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(idx), y)
            loss.backward()
            totals.append(float(nn.utils.clip_grad_norm_(model.parameters(), math.inf)))
            tied.append(_norm(model.emb.weight.grad))
            opt.step()
            run.log(loss=loss)
    np.testing.assert_allclose(gradscope.read_steps(path).grad_norm_total, totals, rtol=1e-6)
    lay = gradscope.read_layers(path)
    for layer in (0, 2):  # the embedding's row and the output layer's
        np.testing.assert_allclose(lay[lay.layer == layer].grad_norm, tied, rtol=1e-6)


@BOTH
def test_gradients_assigned_by_hand_are_the_steps(tmp_path, background):
    # gradients from torch.autograd.grad assigned to p.grad (a backward pass that fills no
    # .grad): the numbers of the gradients step() receives, as the loop with backward()
    def fit(path, functional):
        model = _mlp()
        x, y = _data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gst.watch(model, path, optimizer=opt, background=background) as run:
            for _ in range(3):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                if functional:
                    params = list(model.parameters())
                    for p, g in zip(params, torch.autograd.grad(loss, params)):
                        p.grad = g
                else:
                    loss.backward()
                opt.step()
                run.log(loss=loss)

    fit(tmp_path / "backward.h5", False)
    fit(tmp_path / "grad.h5", True)
    _same_logs(tmp_path / "backward.h5", tmp_path / "grad.h5")
    assert gradscope.read_status(tmp_path / "grad.h5")["status"] == "completed"
