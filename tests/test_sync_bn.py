"""Synchronised BatchNorm (issue 14): two gloo processes under torchrun train like one process on
the global batch, with and without gradient checkpointing."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hvae_lib.layers.norms import BatchNorm2d
from hvae_lib.layers.sync_bn import local_batch_norm, sync_world_size
from hvae_lib.models.nvae import NVAE
from hvae_lib.probability.residual_normal import NVAENormal

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(num_latent_scales=2, num_groups_per_scale=2, num_latent_per_group=4, num_channels_enc=8,
             num_channels_dec=8, num_preprocess_cells=1, num_postprocess_cells=1, num_mix=3)

# Each rank: the same NVAE, its share (rank::world) of the same global batch, DDP, one backward;
# z is the posterior mean (the sampling noise of one process and of two cannot be the same).
WORKER = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from hvae_lib.models.nvae import NVAE
    from hvae_lib.probability.residual_normal import NVAENormal

    NVAENormal.rsample = lambda self: self.mu
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    small, x = eval(sys.argv[1]), torch.load(sys.argv[2])
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = NVAE((3, 16, 16), 8, "logistic_mixture", **small)
        model.grad_checkpointing = checkpointing
        ddp = DistributedDataParallel(model)
        out = ddp(x[rank::world])
        loss = (out.kl_per_group.sum(1) - out.log_px_z).mean()
        loss.backward()  # DDP averages the gradients over the ranks
        dist.all_reduce(total := loss.detach().clone())
        results[checkpointing] = dict(loss=total / world, grads={n: p.grad for n, p in model.named_parameters()},
                                      buffers=dict(model.named_buffers()))
    torch.save(results, os.path.join(sys.argv[3], f"rank{rank}.pt"))
""")


def global_batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g).float() / 255


def single_process(x, monkeypatch):
    monkeypatch.setattr(NVAENormal, "rsample", lambda self: self.mu)
    torch.manual_seed(0)
    model = NVAE((3, 16, 16), 8, "logistic_mixture", **SMALL)
    out = model(x)
    loss = (out.kl_per_group.sum(1) - out.log_px_z).mean()
    loss.backward()
    return dict(loss=loss.detach(), grads={n: p.grad for n, p in model.named_parameters()},
                buffers=dict(model.named_buffers()))


@pytest.mark.slow
def test_two_gloo_processes_normalise_like_one_process_on_the_global_batch(tmp_path, monkeypatch):
    x = global_batch()
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), repr(SMALL), str(tmp_path / "x.pt"), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference = single_process(x, monkeypatch)
    for checkpointing in (False, True):
        for rank in ranks:
            got = rank[checkpointing]
            torch.testing.assert_close(got["loss"], reference["loss"], rtol=1e-5, atol=1e-3)
            for name, g in reference["grads"].items():  # float rounding, relative to the gradient's scale
                assert (got["grads"][name] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-6, (checkpointing, name)
            for name, b in reference["buffers"].items():  # running statistics counted once, globally
                torch.testing.assert_close(got["buffers"][name].to(b.dtype), b, rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f"{checkpointing} {name}: {m}")


def test_one_process_normalises_its_own_batch():
    assert sync_world_size() == 1
    with local_batch_norm():
        assert sync_world_size() == 1
    bn, x = BatchNorm2d(3), torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True))
