"""Feedback updates live in .grad, so DistributedDataParallel averages them like gradients.

Two CPU processes (gloo), each with half the batch, must end with the parameters of one
process trained on the whole batch: W, b and the rule's own P, Q alike.
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ldfa.sim.layers import convert

STEPS, LR = 3, 0.1


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return convert(model, "ld", rank=2, p_rule="oja", q_rule="kp", seed=0)


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(STEPS)]


def worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in batches():
        half = slice(rank * 4, rank * 4 + 4)
        opt.zero_grad()
        F.cross_entropy(model(x[half]), y[half]).backward()
        opt.step()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()}, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    single = make_model()
    opt = torch.optim.SGD(single.parameters(), lr=LR)
    for x, y in batches():
        opt.zero_grad()
        F.cross_entropy(single(x), y).backward()
        opt.step()
    state = single.state_dict()
    assert any(k.endswith(".P") for k in state) and any(k.endswith(".Q") for k in state)
    for k, v in state.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(state["2.P"], make_model().state_dict()["2.P"])  # P did learn
