"""``python -m hvae_lib.train --preset P [--set key=value ...] --out DIR``: train, or resume in DIR.

Runs the same on a laptop CPU, under ``torchrun --nproc_per_node=G`` (DDP: NCCL on GPUs, gloo
on CPU) and over several machines (one ``torchrun --nnodes=N`` per node with c10d rendezvous, as
:func:`torchrun_command` builds it; docs/cluster.md has the SLURM and plain-machines recipes). ``--dry-run`` needs no dataset: it builds the model for the data's shape, prints the
parameter count, the activation memory of one training step and the resolved config, and exits.
Running the same command again resumes from ``DIR/checkpoint.pt``.

Exit status: 0 when the run finished; 2 for a config, checkpoint or data problem (one line saying
what to change); 1 when a file of the run could not be written (one line naming it and the cause);
128 + the signal's number when SIGINT (130), SIGTERM (143) or SIGUSR1 (138) stopped the run after
saving a checkpoint at the step reached (one line with that step, the checkpoint and the command
that resumes).
"""
from __future__ import annotations

import json
import os
import shlex
import sys

import torch
import torch.distributed as dist

from hvae_lib.config import describe, override
from hvae_lib.config.ranges import ArgumentParser, ConfigError
from hvae_lib.data.contract import DatasetUnavailableError
from hvae_lib.models.presets import get_preset, list_presets
from hvae_lib.training.checkpoint import CheckpointError
from hvae_lib.training.safe_write import WriteError
from hvae_lib.training.stopping import StoppedWithRankZero, TrainingInterrupted, signal_name


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m hvae_lib.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vae_fashion", help="a preset name (see --list-presets)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set max_steps=200 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the parameter count, the activation memory of a step and the config, then exit")
    p.add_argument("--list-presets", action="store_true", help="print the presets, one per line, and exit")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out instead of resuming")
    return p.parse_args(argv)


def activation_bytes(config) -> tuple[float, float, object]:
    """(fixed bytes, bytes per image, model): what autograd saves for backward in one training step of
    ``config``'s model, in its precision and checkpointing, as ``fixed + per_image * batch``.

    Measured on this CPU on random images at batches of 2 and 4 (no dataset is read: the model is
    built for the shape :func:`~hvae_lib.data.contract.dataset_info` gives) and extrapolated linearly.
    """
    from hvae_lib.data.contract import dataset_info
    from hvae_lib.memory.saved_tensors import count_saved_tensors
    from hvae_lib.models import build_model
    from hvae_lib.probability.objectives import elbo
    from hvae_lib.training.engine import PRECISIONS

    try:
        info = dataset_info(config.data.name, config.data.resolution, config.data.bits)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    torch.manual_seed(config.run.seed)
    model = build_model(config, info)
    model.grad_checkpointing = config.run.grad_checkpointing
    model.train()
    dtype = PRECISIONS[config.run.precision]
    saved = {}
    for n in (2, 4):
        x = torch.randint(0, 2**info.bits, (n, *info.image_shape)).float() / (2**info.bits - 1)  # (n, C, H, W)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            _, counted = count_saved_tensors(lambda: elbo(model(x), info.num_dims).loss, model.parameters())
        saved[n] = counted.activation_bytes
    per_image = (saved[4] - saved[2]) / 2
    return saved[2] - 2 * per_image, per_image, model


def dry_run(config) -> str:
    """The parameter count, the activation memory of one training step at the config's (global) batch,
    the memory of weights, gradients and optimiser state, and the resolved config; no dataset needed."""
    from hvae_lib.memory.saved_tensors import parameter_bytes

    fixed, per_image, model = activation_bytes(config)
    batch = config.optim.batch_size
    copies = 4 + (config.optim.ema_rate > 0)  # weights, gradients, the optimiser's two moments (+ the EMA)
    return (f"parameters: {sum(p.numel() for p in model.parameters())}\n"
            f"activation memory of one training step at batch {batch}: {_size(fixed + per_image * batch)} "
            f"({_size(per_image)} per image; what autograd saves for backward in {config.run.precision}"
            f"{' with gradient checkpointing' if config.run.grad_checkpointing else ''}, measured on this CPU at "
            f"batches 2 and 4 and extrapolated linearly; under torchrun each process holds its share)\n"
            f"weights, gradients, optimiser state{' and EMA' if copies == 5 else ''}: "
            f"{_size(copies * parameter_bytes(model))}\n" + describe(config))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def torchrun_command(train_args: list[str], *, nnodes: int, nproc_per_node: int, endpoint: str, run_id: str,
                     entry: tuple[str, ...] = ("-m", "hvae_lib.train")) -> list[str]:
    """The command every node of a multi-node run starts: torchrun with c10d rendezvous at ``endpoint``
    (host:port on the first node), ``nproc_per_node`` processes on this node, each running ``entry``
    with ``train_args``. The scripts of docs/cluster.md build the same command (tests/test_cluster.py)."""
    return ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", *entry, *train_args]


def launcher_options(cmdline: list[str]) -> list[str] | None:
    """The options a torchrun command line gives the launcher (all before its training script), or
    None when ``cmdline`` (``torchrun ...`` or ``python -m torch.distributed.run ...``) is not torchrun's."""
    import contextlib
    import io

    from torch.distributed.run import get_args_parser

    starts = [i + 1 for i, a in enumerate(cmdline)
              if (a == "torch.distributed.run" and i and cmdline[i - 1] == "-m") or os.path.basename(a) == "torchrun"]
    if not starts:
        return None
    argv = cmdline[starts[0]:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = get_args_parser().parse_args(argv)
    except SystemExit:
        return None
    script = len(argv) - len(parsed.training_script_args) - 1  # where the training script stands
    if script < 0 or argv[script] != parsed.training_script:
        return None
    return [a for a in argv[:script] if a not in ("-m", "--module")]


def parent_cmdline() -> list[str]:
    """This process's parent's command line (under torchrun: the launcher's), from Linux's /proc; [] elsewhere."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except (OSError, UnicodeDecodeError):
        return []


def resume_command(argv: list[str], launcher: list[str] | None = None) -> str:
    """The command that resumes this run: the same arguments without --fresh (which would start over).

    Under torchrun it is torchrun with the options this node's launcher was given (``launcher``; by
    default read from the launcher's command line: the rendezvous too, for a multi-node run), to be
    run on each node as before.
    """
    args = shlex.join(a for a in argv if a != "--fresh")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return f"python -m hvae_lib.train {args}"
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    where = f" (on each of the {nodes} nodes)" if nodes > 1 else ""
    launcher = launcher_options(parent_cmdline()) if launcher is None else launcher
    if launcher is None:  # not started by torchrun itself, or its command line is out of sight
        local = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        launcher = [f"--nnodes={nodes}", f"--nproc-per-node={local}"]
        where = f" (on each of the {nodes} nodes, with the rendezvous options it was started with)" if nodes > 1 else ""
    return f"torchrun {shlex.join(launcher)} -m hvae_lib.train {args}{where}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.list_presets:
        for name, description in list_presets():
            print(f"{name}  {description}")
        return 0
    from hvae_lib.training.engine import Trainer, TrainingError

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    try:
        config = override(get_preset(args.preset), args.overrides)
        if args.dry_run:
            print(dry_run(config), end="")
            return 0
        if distributed:
            backend = "nccl" if torch.cuda.is_available() and config.run.device != "cpu" else "gloo"
            dist.init_process_group(backend)
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        trainer = Trainer(config, args.out or f"runs/{args.preset}", resume=not args.fresh)
        result = trainer.fit()
        if trainer.is_main:
            print(json.dumps(result))
        return 0
    except (ConfigError, CheckpointError, DatasetUnavailableError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StoppedWithRankZero:
        return 1  # rank 0 has said which file
    except TrainingInterrupted as stop:
        if rank == 0:
            print(f"Stopped by {signal_name(stop.signum)} at step {stop.step} of {stop.max_steps}; checkpoint: "
                  f"{stop.checkpoint}; resume with: {resume_command(argv)}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        if rank == 0:
            print("Interrupted before training began (or stopped at once without saving); the run folder's "
                  "checkpoint, if any, is whole.", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
