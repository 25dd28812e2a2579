"""``python -m hvae_lib.train --preset P [--set key=value ...] --out DIR``: train, or resume in DIR.

Runs the same on a laptop CPU and under ``torchrun --nproc_per_node=G`` (DDP: NCCL on GPUs, gloo
on CPU). ``--dry-run`` builds the model and data, prints the parameter count and the resolved
config, and exits. Running the same command again resumes from ``DIR/checkpoint.pt``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from .checkpoint import CheckpointError
from .config import ConfigError, describe, get_preset, list_presets, override
from .data import DatasetUnavailableError


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m hvae_lib.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vae_fashion", help="a preset name (see --list-presets)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set max_steps=200 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    p.add_argument("--dry-run", action="store_true", help="print the parameter count and config, then exit")
    p.add_argument("--list-presets", action="store_true", help="print the presets, one per line, and exit")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out instead of resuming")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_presets:
        for name, description in list_presets():
            print(f"{name}  {description}")
        return 0
    from .engine import Trainer, TrainingError, build_data_and_model

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        config = override(get_preset(args.preset), args.overrides)
        if args.dry_run:
            _, model = build_data_and_model(config)
            print(f"parameters: {sum(p.numel() for p in model.parameters())}")
            print(describe(config), end="")
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
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
