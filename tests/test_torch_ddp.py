"""gradscope.torch under DistributedDataParallel: two CPU processes on the gloo backend."""

from __future__ import annotations

import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import gradscope

STEPS = 3


def _worker(rank, world, port, folder):
    import torch
    from torch import nn

    import gradscope.torch as gst

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                           world_size=world)
    try:
        for ranks in ("zero", "all"):  # one process group for both (starting one is slow)
            torch.manual_seed(0)  # the same initial weights on both ranks
            model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
            ddp = nn.parallel.DistributedDataParallel(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            grads = []
            with gst.watch(ddp, f"{folder}/{ranks}/ddp.h5", optimizer=opt, ranks=ranks) as run:
                for _ in range(STEPS):
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(ddp(x), y)
                    loss.backward()
                    grads.append(float(model[0].weight.grad.norm()))
                    opt.step()
                    run.log(loss=loss)
            torch.save(grads, f"{folder}/grads-{ranks}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("ddp")
    for ranks in ("zero", "all"):
        (folder / ranks).mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return folder


def test_rank_zero_writes_all_reduced_gradients(ddp_runs):
    path = ddp_runs / "zero" / "ddp.h5"
    grads = [torch.load(ddp_runs / f"grads-zero.{r}.pt") for r in range(2)]
    assert sorted(p.name for p in (ddp_runs / "zero").glob("*.h5")) == ["ddp.h5"]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)  # all-reduced: equal on ranks
    lay = gradscope.read_layers(path)
    l0 = lay[lay.layer == 0]
    np.testing.assert_allclose(l0.grad_norm, grads[0], rtol=1e-5)
    cfg = gradscope.read_config(path)
    assert cfg["world_size"] == 2 and cfg["rank"] == 0
    assert cfg["layer_names"] == ["0", "2"]  # DDP's "module." prefix is not part of the name
    assert gradscope.read_status(path)["status"] == "completed"


def test_ranks_all_writes_one_log_per_rank(ddp_runs):
    folder = ddp_runs / "all"
    names = sorted(p.name for p in folder.glob("*.h5"))
    assert names == ["ddp.rank0.h5", "ddp.rank1.h5"]
    s0 = gradscope.read_steps(folder / "ddp.rank0.h5")
    s1 = gradscope.read_steps(folder / "ddp.rank1.h5")
    assert len(s0) == len(s1) == STEPS
    assert not np.allclose(s0.loss, s1.loss)  # each rank's own batch loss
    np.testing.assert_allclose(s0.grad_norm_total, s1.grad_norm_total, rtol=1e-6)
