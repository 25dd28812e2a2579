"""``python -m hvae_lib.import_nvae CHECKPOINT [--preset P] --out DIR``: one of NVlabs' released NVAE
checkpoints as an hvae_lib checkpoint (Chapters 3-4).

NVlabs/NVAE's ``checkpoint.pt`` holds the weights and the ``argparse.Namespace`` of the training
command; it is read weights-only with that one class allowed (nothing else in the file can run).
The weights are mapped onto :class:`~hvae_lib.models.nvae.NVAE` (:mod:`hvae_lib.models.nvae_official`),
the preset is recognised from the tensors' names and shapes (a model no preset fits, such as the
multiscale CIFAR-10 checkpoint, is built from the namespace's flags over its dataset's preset), and
``DIR/checkpoint.pt`` is written with ``official_numerics`` on, so that

    python -m hvae_lib.evaluate DIR/checkpoint.pt --iw-samples 1000
    python -m hvae_lib.sample DIR/checkpoint.pt --temperature 0.6 --readjust-bn 500

evaluate and sample it as NVlabs' code does, and the printed ``train`` command fine-tunes it (a fresh
optimiser at step 0). ``benchmarks/nvae_import_check.py`` checks the import against NVlabs' model code.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from hvae_lib.config import override, to_dict
from hvae_lib.config.ranges import ConfigError
from hvae_lib.data.contract import dataset_info
from hvae_lib.models import build_model
from hvae_lib.models.nvae_official import (
    DATASETS,
    PAPER_PRESETS,
    OfficialCheckpointError,
    config_keys_from_args,
    find_preset,
    load_released,
    official_to_ours,
)
from hvae_lib.models.presets import get_preset
from hvae_lib.training import checkpoint as ckpt_io
from hvae_lib.training.optim import make_optimizer, make_scheduler


def import_released(path, out_path, preset: str | None = None) -> dict:
    """Write an hvae_lib checkpoint at ``out_path`` from NVlabs' ``checkpoint.pt``; return a summary."""
    try:
        released = load_released(path)
        dataset, keys = config_keys_from_args(released["args"])
    except OfficialCheckpointError as err:
        raise OfficialCheckpointError(f"{path} cannot be imported as an NVlabs NVAE checkpoint: {err}.") from None
    found = preset or find_preset(released["state_dict"])
    base = found or next(p for d, p in DATASETS.values() if d == dataset)
    config = get_preset(base)
    if config.model.family != "nvae":
        raise ConfigError(f"--preset {base} is a {config.model.family} preset; NVlabs' NVAE weights need an nvae preset.")
    changes = {k: v for k, v in keys.items() if getattr(config.model, k) != v}  # the flags the preset lacks
    bits = getattr(released["args"], "num_x_bits", 8)
    data = {} if dataset == "mnist" or bits == dataset_info(dataset).bits else {"data.bits": bits}
    config = override(config, {**{f"model.{k}": v for k, v in changes.items()}, "model.official_numerics": True,
                               "data.name": dataset, **data})
    info = dataset_info(config.data.name, config.data.resolution, config.data.bits)
    model = build_model(config, info)
    try:
        model.load_state_dict(official_to_ours(released["state_dict"], model))
    except OfficialCheckpointError as err:
        raise OfficialCheckpointError(f"{path} does not fit the {base} preset's model{' with its flags' if changes else ''}: "
                                      f"{err}.") from None
    optimizer = make_optimizer(model.parameters(), config.optim)
    state = ckpt_io.checkpoint_state(
        config, info, model.state_dict(), optimizer, make_scheduler(optimizer, config.optim),
        torch.amp.GradScaler("cpu", enabled=False),
        imported_from={"nvlabs_checkpoint": str(path), "preset": base, "preset_fits_tensors": found is not None,
                       "epoch": released.get("epoch"), "nvlabs_dataset": released["args"].dataset})
    ckpt_io.save_atomic(state, out_path)
    model_keys = to_dict(config)["model"]
    sets = [f"{k}={v}" for k, v in model_keys.items() if k != "family" and v != getattr(get_preset(base).model, k)]
    sets += [f"{k}={v}" for k, v in data.items()]
    finetune = f"python -m hvae_lib.train --preset {base} " + " ".join(f"--set {shlex.quote(s)}" for s in sets)
    return {"preset": base, "fits": found is not None, "changes": changes, "out": str(out_path),
            "parameters": sum(p.numel() for p in model.parameters()),
            "finetune": f"{finetune} --out {shlex.quote(str(Path(out_path).parent))}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hvae_lib.import_nvae", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="NVlabs' checkpoint.pt")
    p.add_argument("--preset", default=None, help="an nvae preset (default: found from the weights)")
    p.add_argument("--out", required=True, help="run folder to write checkpoint.pt into")
    args = p.parse_args(argv)
    if args.preset is not None and args.preset not in PAPER_PRESETS:
        print(f"error: {args.preset!r} is not an NVAE paper preset; use one of {', '.join(PAPER_PRESETS)}.",
              file=sys.stderr)
        return 2
    try:
        summary = import_released(args.checkpoint, Path(args.out) / "checkpoint.pt", args.preset)
    except (OfficialCheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    how = "recognised from the tensors" if summary["fits"] else \
        f"with the checkpoint's flags ({', '.join(f'{k}={v}' for k, v in summary['changes'].items())})"
    print(f"imported {summary['parameters']:,} parameters as preset {summary['preset']} ({how}) into {summary['out']}, "
          f"evaluated with NVlabs' numerics; fine-tune with: {summary['finetune']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
