"""The training engine: one loop from a laptop CPU to multi-GPU torchrun (Chapter 1 onwards).

What it does each step: take the next global batch (a deterministic function of the step, so a
resumed run sees the same batches), compute the loss under autocast, backpropagate, clip the
gradient norm, and *skip* the update when the loss or gradient is non-finite or the norm exceeds
``skip_threshold`` (VDVAE's gradient skipping), stopping with an error after too many skips in a
row instead of freezing silently (openai/vdvae#25). Then the EMA, the LR schedule, logging,
periodic test evaluation, sample grids and atomic checkpoints.

Stopping loses nothing: on SIGINT, SIGTERM or SIGUSR1 the step under way finishes, a checkpoint is
written at the step reached and :meth:`Trainer.fit` raises ``TrainingInterrupted``; under torchrun
the ranks agree on that step in the all-reduce each step makes anyway (:mod:`hvae_lib.training.stopping`).
A file that cannot be written (a full or read-only disk) stops the run with one sentence naming
it, the last good checkpoint whole and nothing half-written (:mod:`hvae_lib.training.safe_write`).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image

from hvae_lib.analysis.plotting import image_grid
from hvae_lib.config import Config, describe, from_dict, validate
from hvae_lib.config.ranges import ConfigError
from hvae_lib.models import build_model
from hvae_lib.models.base import seeded_eval
from hvae_lib.probability.kl_control import kl_objective, kl_warmup_beta
from hvae_lib.probability.objectives import ModelOutput, elbo, nats_to_bpd
from hvae_lib.training import checkpoint as ckpt_io
from hvae_lib.training.data import load_data, protocol
from hvae_lib.training.optim import make_optimizer, make_scheduler, schedule_change, should_skip, update_ema
from hvae_lib.training.run_log import GlobalBatches, Progress, RunLog, batch_split_problem, summarise
from hvae_lib.training.safe_write import WriteError, run_folder_problem, write_atomic
from hvae_lib.training.stopping import CleanStop, StopSignals

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on as configured; the message says what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"Device {name!r} was asked for but no CUDA device is visible; use the CPU "
                          f"(--set device=cpu for training, --device cpu for evaluate and sample).")
    if name.startswith("cuda") and dist.is_initialized():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def build_data_and_model(config: Config):
    data = load_data(config)
    return data, build_model(config, data.info)


class Trainer(CleanStop):
    """Owns the model, optimiser, EMA and state of one run in ``out_dir``; :meth:`fit` trains.

    How it stops on a signal or a failed write comes from :class:`~hvae_lib.training.stopping.CleanStop`.

    ``loss_fn(out, beta)``, when given, replaces the training loss -log p(x|z) + (KL objective): it
    receives the model's :class:`ModelOutput` for the batch and the KL weight beta of this step, and
    returns the scalar to minimise (a model's regulariser is still added). Chapters 1 and 2 train
    with the student's own loss this way; evaluation always reports the exact ELBO.
    """

    def __init__(self, config: Config, out_dir: str | Path, resume: bool = True,
                 loss_fn: Callable[[ModelOutput, float], torch.Tensor] | None = None):
        self.out = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main = self.rank == 0
        validate(config)
        problem = batch_split_problem(config.optim.batch_size, self.world)
        if problem:
            raise ConfigError(problem)
        problem = run_folder_problem(self.out) if self.is_main else ""
        if self.world > 1:  # every rank learns rank 0's verdict, so none goes on alone
            dist.broadcast_object_list(verdict := [problem], src=0)
            problem = verdict[0]
        if problem:
            raise ConfigError(problem)
        ckpt_path = self.out / "checkpoint.pt"
        saved = ckpt_io.load_for_resume(ckpt_path, resume)  # under torchrun: the same on every rank
        if loss_fn is not None and (config.optim.free_bits > 0 or config.optim.kl_balancing):
            raise ConfigError("A loss_fn replaces the whole KL objective, so free_bits and kl_balancing would be "
                              "ignored: set free_bits=0 and kl_balancing=false, or apply them inside loss_fn.")
        self.loss_fn = loss_fn
        if saved is not None:
            ckpt_io.check_compatible(saved, config, ckpt_path)
        self.config = c = config
        torch.manual_seed(c.run.seed)
        self.device = resolve_device(c.run.device)
        self.data, model = build_data_and_model(c)
        self.info = self.data.info
        if saved is not None:
            ckpt_io.check_compatible(saved, config, ckpt_path, self.info)
        if self.world > 1:  # the same weights everywhere (DDP broadcasts them), independent z noise per rank
            torch.manual_seed(c.run.seed + self.rank)
        model.grad_checkpointing = c.run.grad_checkpointing
        self.memory_format = torch.channels_last if c.run.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if c.optim.ema_rate > 0 else None
        ddp_devices = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ddp_devices) if self.world > 1 else self.model
        self.forward = torch.compile(self.ddp) if c.run.compile else self.ddp  # the training forward
        self.optimizer = make_optimizer(self.model.parameters(), c.optim)
        self.scheduler = make_scheduler(self.optimizer, c.optim)
        # fp16 loss scaling starts at 2^10 as in NVAE's train.py, not torch's 2^16: our losses are sums
        # over pixels (thousands of nats), and from 2^16 the first ~7 steps overflow and are skipped.
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**10, enabled=c.run.precision == "fp16")
        self.batches = GlobalBatches(self.data.train, c.optim.batch_size, c.run.seed, self.rank, self.world,
                                     c.data.horizontal_flip)
        self.step, self.consecutive_skips, self.total_skips = 0, 0, 0
        self.best_valid: dict | None = None  # {step, valid_neg_elbo_nats, valid_bpd} of best.pt
        self.saved_step = self._saving_step = None  # the step of the checkpoint on disk; of the last save begun
        self.signals = None  # a StopSignals while fit runs
        self._failure: WriteError | None = None  # rank 0's failed write, until every rank agrees to stop
        self._agreed = (0, False)  # under torchrun: (signal number, rank 0 failed), agreed at the last step
        if saved is not None:
            self._restore(saved)
            self.saved_step = self._saving_step = self.step
            change = schedule_change(from_dict(saved["config"]).optim, c.optim, self.step)
            if change and self.is_main:
                print(change, file=sys.stderr)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return ckpt_io.checkpoint_state(
            self.config, self.info, self.model.state_dict(), self.optimizer, self.scheduler, self.scaler,
            ema_state=self.ema.state_dict() if self.ema is not None else None, step=self.step,
            total_skips=self.total_skips, consecutive_skips=self.consecutive_skips, world_size=self.world,
            best_valid=self.best_valid)

    def _keep_best(self, nats: float) -> None:
        """Write best.pt (the whole state, as checkpoint.pt) when the validation ELBO is the best so far:
        openai/vdvae's released models were chosen on validation, never on test."""
        if self.best_valid is not None and nats >= self.best_valid["valid_neg_elbo_nats"]:
            return
        self.best_valid = {"step": self.step, "valid_neg_elbo_nats": nats,
                           "valid_bpd": nats_to_bpd(nats, self.info.num_dims)}
        if self.is_main:
            self._write(ckpt_io.save_atomic, self.state_dict(), self.out / "best.pt")

    def _restore(self, saved: dict) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            if self.ema is not None:  # a run that turns EMA on starts its average at the resumed weights
                self.ema.load_state_dict(saved["ema"] if saved.get("ema") is not None else saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            if saved["scaler"] and self.scaler.is_enabled():  # empty when saved without fp16
                self.scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ckpt_io.CheckpointError(
                f"{self.out / 'checkpoint.pt'} does not fit this model ({str(err).splitlines()[0][:150]}); "
                f"use a fresh --out folder or the config it was trained with."
            ) from None
        self.step = saved["step"]
        self.total_skips, self.consecutive_skips = saved["total_skips"], saved["consecutive_skips"]
        self.best_valid = saved.get("best_valid")
        rngs = saved["rng"]
        ckpt_io.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    def save(self) -> None:
        """Write checkpoint.pt atomically (rank 0; every rank must call it). No signal interrupts it."""
        if self.signals is not None:
            self.signals.saving = True
        try:
            self._saving_step = self.step  # the same on every rank, whether or not rank 0's write succeeds
            state = self.state_dict()
            if self.world > 1:
                gathered = [None] * self.world
                dist.all_gather_object(gathered, state["rng"][0])
                state["rng"] = gathered
            if self.is_main:
                ckpt_io.save_atomic(state, self.out / "checkpoint.pt")
            self.saved_step = self.step
        finally:
            if self.signals is not None:
                self.signals.saving = False

    # ------------------------------------------------------------------ one step
    def autocast(self):
        dtype = PRECISIONS[self.config.run.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, x: torch.Tensor, step: int):
        """Training loss (KL warm-up, free bits, balancing applied) and the exact ELBO terms."""
        o = self.config.optim
        with self.autocast():
            out = self.forward(x)
        terms = elbo(out, self.info.num_dims)
        beta = kl_warmup_beta(step, o.kl_warmup_steps, o.kl_warmup_start)
        extras = out.extras or {}
        sizes = extras.get("kl_balance_alpha", extras.get("group_sizes"))  # NVAE's per-group prior weights
        regulariser = self.model.regularization(step) if hasattr(self.model, "regularization") else 0.0
        if self.loss_fn is None:
            objective = terms.recon + kl_objective(out.kl_per_group, beta, o.free_bits, o.kl_balancing, sizes)
        else:
            objective = self.loss_fn(out, beta)
            if not isinstance(objective, torch.Tensor) or objective.dim() != 0:
                got = f"shape {tuple(objective.shape)}" if isinstance(objective, torch.Tensor) else type(objective).__name__
                raise TrainingError(f"loss_fn must return a scalar tensor (the loss averaged over the batch), got {got}.")
        loss = objective + regulariser
        return (loss / self.info.num_dims if o.loss_per_dim else loss), terms, beta

    def train_step(self) -> dict:
        o = self.config.optim
        x = self.batches.get(self.step).to(self.device, memory_format=self.memory_format)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, beta = self.loss(x, self.step)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip or float("inf"))
        bad = should_skip(loss.detach(), grad_norm, o.skip_threshold)
        if self.world > 1:  # every rank must agree, or the replicas drift apart; so must their stop requests
            stop = [float(self.signals.signum or 0) if self.signals else 0.0, float(self._failure is not None)]
            flags = torch.cat([bad.float().reshape(1), torch.tensor(stop, device=bad.device)])
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad, signum, failed = flags.tolist()
            self._agreed = (int(signum), bool(failed))
        skipped = bool(bad)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.consecutive_skips += 1
            self.total_skips += 1
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.consecutive_skips = 0
            if self.ema is not None:
                update_ema(self.ema, self.model, self.config.optim.ema_rate)
        with warnings.catch_warnings():  # a skipped first update makes torch warn about the call order
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        if self.consecutive_skips >= o.max_consecutive_skips:
            ckpt = self.out / "checkpoint.pt"
            where = (f"{ckpt} still holds the last good weights" if ckpt.exists()
                     else "no checkpoint was written before the skips began")
            raise TrainingError(
                f"Stopped after {self.consecutive_skips} updates in a row were skipped (loss {loss.item():.4g}, "
                f"gradient norm {grad_norm.item():.4g}, skip_threshold {o.skip_threshold:g}): raise --set "
                f"skip_threshold above the usual gradient norm (0 turns size-based skipping off), lower --set lr, "
                f"or look for NaNs in the data; {where}."
            )
        return {
            "loss": loss.item(), "recon": terms.recon.item(), "kl": terms.kl.item(),
            "bpd": terms.bpd.item(), "kl_per_group": terms.kl_per_group.detach().float().cpu(),
            "grad_norm": grad_norm.item(), "skipped": int(skipped), "kl_weight": beta,
            "seconds": time.perf_counter() - t0, "images": x.shape[0] * self.world,
        }

    # ------------------------------------------------------------------ evaluation and samples
    @property
    def eval_model(self):
        return self.ema if self.ema is not None else self.model

    @property
    def eval_split(self) -> str:
        """Where periodic evaluations look: the validation split when the data has one (openai/vdvae's
        protocol, ``data.vdvae_split``), else the test split."""
        return "valid" if self.data.valid is not None else "test"

    @torch.no_grad()
    def evaluate(self, max_batches: int = 0, split: str = "test", raw: bool = False) -> dict | None:
        """Negative ELBO on ``split`` ("test" or "valid") as ``{split}_neg_elbo_nats``, ``{split}_bpd`` and
        ``{split}_images``, with the EMA weights when present (the raw ones with ``raw``: Chapter 6 compares
        every model on its raw weights); None when a stop signal cut it short on any rank."""
        dataset = self.data.valid if split == "valid" else self.data.test
        total = torch.zeros(3, device=self.device)  # (sum of -ELBO, images, ranks cut short)
        with seeded_eval(self.model if raw else self.eval_model, 1234 + self.rank) as model:
            n = len(dataset)
            bs = self.config.optim.batch_size // self.world
            for i, start in enumerate(range(self.rank * bs, n, bs * self.world)):
                if max_batches and i >= max_batches:
                    break
                if self.signals is not None and self.signals.requested:
                    total[2] = 1
                    break
                x = torch.stack([dataset[j][0] for j in range(start, min(start + bs, n))]).to(self.device)
                with self.autocast():
                    out = model(x)
                total[:2] += torch.stack([-elbo(out, self.info.num_dims).elbo.sum(), torch.tensor(x.shape[0], device=self.device)])
        if self.world > 1:
            dist.all_reduce(total)
        if total[2] > 0:
            return None
        nats = (total[0] / total[1]).item()
        return {f"{split}_neg_elbo_nats": nats, f"{split}_bpd": nats_to_bpd(nats, self.info.num_dims),
                f"{split}_images": int(total[1])}

    @torch.no_grad()
    def write_samples(self) -> None:
        if not self.is_main:
            return
        r = self.config.run
        with seeded_eval(self.eval_model, r.seed) as model:
            images = model.sample(r.num_samples, temperature=r.sample_temperature)
        grid = image_grid(images)  # (3, H', W')
        write_atomic(self.out / "samples.png", lambda f: save_image(grid, f, format="png"))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train from ``self.step`` to ``optim.max_steps``; return the final test result.

        SIGINT, SIGTERM and SIGUSR1 (Ctrl-C, interrupting a notebook's kernel, a scheduler's
        preemption) stop the run after the step under way: a checkpoint is written at the step
        reached and :class:`~hvae_lib.training.stopping.TrainingInterrupted` (a KeyboardInterrupt) is raised,
        so a notebook stops at this cell as for any interrupt. This trainer stays usable: ``fit()``
        again resumes exactly, as ``Trainer(config, out)`` in a new process would.
        """
        c = self.config
        logger = RunLog(self.out, enabled=self.is_main)
        progress = Progress(c.optim.max_steps, self.step, f"{c.model.family} on {c.data.name}",
                            enabled=self.is_main and not c.run.quiet)
        with StopSignals(announce=self.is_main) as self.signals:
            try:
                self._write(logger.open, self.step)
                final = self._train(logger, progress)
            except BaseException:
                logger.close(quietly=True)  # the exception in flight says what went wrong
                raise
            finally:
                progress.close()
                self.signals = None
        self._write(logger.close)
        return final

    def _train(self, logger: RunLog, progress: Progress) -> dict:
        c, r = self.config, self.config.run
        if self.is_main:
            self._write(write_atomic, self.out / "config", lambda f: f.write(describe(c).encode()))
        window: list[dict] = []
        self.model.train()
        while self.step < c.optim.max_steps and not self._stopping():
            window.append(self.train_step())
            last = self.step == c.optim.max_steps
            if self.step % r.log_every == 0 or last or self._stopping():  # the same on every rank
                record, window = self._summarise(window), []
                self._write(logger.write, record, self.step)
                progress.update(self.step, {"loss": f"{record['loss']:.1f}", "bpd": f"{record['bpd']:.3f}",
                                            "skipped": self.total_skips, "img_s": f"{record['images_per_s']:.0f}"},
                                last=last or self._stopping())
            else:
                progress.update(self.step)
            if self._stopping():
                break
            if r.eval_every and self.step % r.eval_every == 0 and not last:
                result = self.evaluate(r.eval_batches, self.eval_split)
                if result is not None:  # else a signal cut it short
                    self._write(logger.write, {"split": self.eval_split, **result}, self.step)
                    if self.eval_split == "valid":
                        self._keep_best(result["valid_neg_elbo_nats"])
            if r.sample_every and self.step % r.sample_every == 0:
                self._write(self.write_samples)
            if r.checkpoint_every and self.step % r.checkpoint_every == 0:
                self._write(self.save)
        if window:  # a stop noticed between steps (one process only): log the steps since the last record
            self._write(logger.write, self._summarise(window), self.step)
        if self._stopping():
            self._stop(save=True)
        self._write(self.save)
        self._write(self.write_samples)
        final = self.evaluate()
        if final is None:  # a signal cut the final evaluation short; the checkpoint is already written
            self._stop(save=False)
        final = {"step": self.step, "split": "test", **final}
        self._write(logger.write, final, self.step)
        if self.best_valid is not None:
            final["best_valid"] = self.best_valid
        final |= protocol(self.config, self.data)
        if self.is_main:
            self._write(write_atomic, self.out / "results.json",
                        lambda f: f.write((json.dumps(final, indent=2) + "\n").encode()))
        self._raise_failure()
        return final

    def _summarise(self, window: list[dict]) -> dict:
        """The record of the steps in ``window``, averaged over them and (under torchrun) the ranks."""
        record = summarise(window, self.world)
        return {"step": self.step, "split": "train", **record, "lr": self.scheduler.get_last_lr()[0]}
