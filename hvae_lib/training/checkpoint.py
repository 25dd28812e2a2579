"""Checkpoints that survive crashes and load safely (the training engine).

A checkpoint is a plain dict of tensors and primitives, so ``torch.load(weights_only=True)`` reads
it: a file carrying arbitrary pickled objects is refused before any of its code runs (NVAE's
checkpoints hold a pickled argparse namespace and need that safety switched off). Writes are atomic:
a temp file in the same folder, fsync, then ``os.replace``, so a ``kill -9``, a second Ctrl-C or a
full disk at any moment leaves either the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import dataclasses
import pickle
import random
import re
import socket
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hvae_lib import __version__
from hvae_lib.config import from_dict, to_dict
from hvae_lib.data.contract import DatasetInfo
from hvae_lib.models import build_model
from hvae_lib.training.safe_write import write_atomic

FORMAT = "hvae_lib.training.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupted, unsafe, foreign, or from another model."""


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file beside ``path``, fsync it, then atomically replace ``path``.

    A writer killed mid-save (``kill -9``) leaves its temp file behind; the next save removes such
    leftovers, so at most one accumulates. A full or read-only disk raises
    :class:`~hvae_lib.training.safe_write.WriteError` and leaves ``path`` as it was. Only one process may
    write a given ``path`` at a time.
    """
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by this library, refusing anything else with one clear sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; pass the checkpoint.pt written by `python -m hvae_lib.train`.")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it better
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if not found:  # junk bytes or a bare pickle stream: not a torch.save file at all
            raise _unreadable(path, err) from None
        raise CheckpointError(
            f"Refused to load {path}: it holds a pickled Python object ({found.group(1)}) that a weights-only load "
            f"does not allow, so nothing in it was run; only checkpoints written by hvae_lib are accepted."
        ) from None
    except Exception as err:  # torch.load fails on junk with RuntimeError, EOFError, KeyError, ...
        raise _unreadable(path, err) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an hvae_lib checkpoint (no '{FORMAT}' marker); "
            f"train with `python -m hvae_lib.train` to make one."
        )
    return ckpt


def load_for_resume(path: Path, resume: bool = True) -> dict | None:
    """The checkpoint a run resumes from (None to start afresh), the same on every rank under torchrun.

    Every rank reads ``path`` itself, so over several machines the run folder must be on a file system
    they all see. When the ranks find different things there (a node with its own empty folder of that
    name, a file another node cannot read), every rank raises the same :class:`CheckpointError` naming
    two ranks, their hosts and what each found, instead of training on unequal states until a
    collective hangs.
    """
    saved, problem = None, ""
    if resume and path.exists():
        try:
            saved = load_checkpoint(path)
        except CheckpointError as err:
            problem = str(err)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        if problem:
            raise CheckpointError(problem)
        return saved
    views = [None] * dist.get_world_size()  # (step found or None, host, path, error), one per rank
    view = (saved["step"] if saved is not None else None, socket.gethostname(), str(path), problem)
    dist.all_gather_object(views, view)
    problem = next((v[3] for v in views if v[3]), "")
    if problem:
        raise CheckpointError(problem)
    odd = next((r for r, v in enumerate(views) if v[0] != views[0][0]), None)
    if odd is not None:
        def found(v):
            what = f"a checkpoint at step {v[0]}" if v[0] is not None else "no checkpoint"
            return f"{what} at {v[2]}"
        raise CheckpointError(
            f"The ranks see different run folders: rank 0 (on {views[0][1]}) finds {found(views[0])} and rank {odd} "
            f"(on {views[odd][1]}) finds {found(views[odd])}; put --out on a file system every node shares "
            f"(docs/cluster.md) and run the same command again."
        )
    return saved


def checkpoint_state(config, info, model_state: dict, optimizer, scheduler, scaler, *, ema_state: dict | None = None,
                     step: int = 0, total_skips: int = 0, consecutive_skips: int = 0, world_size: int = 1,
                     **extra) -> dict:
    """What a checkpoint holds: the config, the data's shape, the weights (and EMA), the optimiser,
    schedule and loss-scaler state, the step and skip counts and this process's RNG state (the
    engine gathers one per rank); ``extra`` adds keys such as an import's source files."""
    return {
        "format": FORMAT, "library_version": __version__, "config": to_dict(config),
        "data_info": dataclasses.asdict(info), "step": step, "total_skips": total_skips,
        "consecutive_skips": consecutive_skips, "model": model_state, "ema": ema_state,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "rng": [rng_state()], "world_size": world_size, **extra,
    }


def check_compatible(saved: dict, config, path: Path, info=None) -> None:
    """Refuse, in one sentence naming the keys, a checkpoint of another model, optimiser or data.

    Without ``info`` (before the data is loaded): the keys that fix the shapes of the weights and
    the optimiser state; with it: the image shape and bit depth the data gives.
    """
    old, new = to_dict(from_dict(saved["config"])), to_dict(config)
    if info is None:
        pairs = {f"model.{k}": (old["model"].get(k), new["model"].get(k)) for k in old["model"] | new["model"]}
        pairs["data.name"] = (old["data"]["name"], new["data"]["name"])
        pairs["optim.optimizer"] = (old["optim"]["optimizer"], new["optim"]["optimizer"])
    else:
        pairs = {f"data {k}": (saved["data_info"].get(k), v) for k, v in dataclasses.asdict(info).items()}
    diffs = [f"{key}={a!r} there but {b!r} here" for key, (a, b) in sorted(pairs.items())
             if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)]
    if diffs:
        raise CheckpointError(
            f"{path} comes from another model or config ({'; '.join(diffs)}), so this run cannot resume it: "
            f"use the same preset and keys, or a fresh --out folder (or --fresh)."
        )


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"Could not read {path} as a checkpoint ({type(err).__name__}); the file is corrupted or not a "
        f"PyTorch file, so delete it to start afresh or point to another checkpoint."
    )


def rng_state() -> dict:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors and primitives."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x




def load_model(path, device="cpu", prefer_ema: bool = True):
    """(model in eval mode, config, data info) from a checkpoint written by the training engine.

    The EMA weights are used when the checkpoint has them. No dataset is needed.
    """
    saved = load_checkpoint(path)
    missing = {"config", "data_info", "model"} - set(saved)
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}; it was not written by this version of the training engine.")
    config = from_dict(saved["config"])
    info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["data_info"].items()})
    model = build_model(config, info)
    weights = saved["ema"] if prefer_ema and saved.get("ema") is not None else saved["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the model its config describes ({str(err).splitlines()[0][:150]}).") from None
    return model.to(device).eval(), config, info
