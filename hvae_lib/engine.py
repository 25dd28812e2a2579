"""The training engine: one loop from a laptop CPU to multi-GPU torchrun (Chapter 1 onwards).

What it does each step: take the next global batch (a deterministic function of the step, so a
resumed run sees the same batches), compute the loss under autocast, backpropagate, clip the
gradient norm, and *skip* the update when the loss or gradient is non-finite or the norm exceeds
``skip_threshold`` (VDVAE's gradient skipping), stopping with an error after too many skips in a
row instead of freezing silently (openai/vdvae#25). Then the EMA, the LR schedule, logging,
periodic test evaluation, sample grids and atomic checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .config import Config, ConfigError, describe, from_dict, to_dict, validate
from .data import DatasetInfo, load_dataset
from .kl_control import kl_objective, kl_warmup_beta
from .objectives import elbo, nats_to_bpd
from .plotting import save_grid
from .run_log import GlobalBatches, RunLog

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on as configured; the message says what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda was asked for but no CUDA device is visible; use --set device=cpu.")
    if name.startswith("cuda") and dist.is_initialized():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def load_data(config: Config):
    """The train/test datasets the config names (limits of 0 mean the whole split)."""
    d = config.data
    try:
        return load_dataset(d.name, d.root or None, train_limit=d.train_limit or None,
                            test_limit=d.test_limit or None, resolution=d.resolution, seed=config.run.seed)
    except ValueError as err:  # the loader's one-sentence complaint about data.* keys
        raise ConfigError(str(err)) from None


def build_model(config: Config, info: DatasetInfo):
    """A freshly initialised model for ``config`` on data described by ``info``."""
    try:
        return config.model.build(tuple(info.image_shape), info.bits, info.likelihood)
    except ValueError as err:  # a model's one-sentence complaint about its hyperparameters
        raise ConfigError(str(err)) from None


def build_data_and_model(config: Config):
    data = load_data(config)
    return data, build_model(config, data.info)


def lr_factor(step: int, optim) -> float:
    """Linear warm-up to 1, then cosine down to lr_min / lr over schedule_steps, or constant."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    horizon = max(1, (optim.schedule_steps or optim.max_steps) - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / horizon)
    floor = optim.lr_min / optim.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def should_skip(loss: torch.Tensor, grad_norm: torch.Tensor, skip_threshold: float) -> torch.Tensor:
    """VDVAE's gradient skipping (Chapter 6): skip the update (a bool tensor) when the loss or the
    gradient norm is not finite, or when ``skip_threshold`` > 0 and the norm exceeds it."""
    bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
    return bad | (grad_norm > skip_threshold) if skip_threshold > 0 else bad


def make_optimizer(params, optim) -> torch.optim.Optimizer:
    kinds = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if optim.optimizer not in kinds:
        raise ConfigError(f"optim.optimizer={optim.optimizer!r} is not one of {', '.join(kinds)}.")
    return kinds[optim.optimizer](params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)


class Trainer:
    """Owns the model, optimiser, EMA and state of one run in ``out_dir``; :meth:`fit` trains."""

    def __init__(self, config: Config, out_dir: str | Path, resume: bool = True):
        self.out = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main = self.rank == 0
        ckpt_path = self.out / "checkpoint.pt"
        saved = ckpt_io.load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
        validate(config)
        if saved is not None:
            self._check_compatible(saved, config)
        self.config = c = config
        torch.manual_seed(c.run.seed)
        self.device = resolve_device(c.run.device)
        self.data, model = build_data_and_model(c)
        self.info = self.data.info
        if saved is not None:
            self._check_compatible(saved, config, self.info)
        if self.world > 1:  # the same weights everywhere (DDP broadcasts them), independent z noise per rank
            torch.manual_seed(c.run.seed + self.rank)
        model.grad_checkpointing = c.run.grad_checkpointing
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if c.optim.ema_rate > 0 else None
        ddp_devices = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ddp_devices) if self.world > 1 else self.model
        self.optimizer = make_optimizer(self.model.parameters(), c.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, c.optim))
        # fp16 loss scaling starts at 2^10 as in NVAE's train.py, not torch's 2^16: our losses are sums
        # over pixels (thousands of nats), and from 2^16 the first ~7 steps overflow and are skipped.
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**10, enabled=c.run.precision == "fp16")
        self.batches = GlobalBatches(self.data.train, c.optim.batch_size, c.run.seed, self.rank, self.world)
        self.step, self.consecutive_skips, self.total_skips = 0, 0, 0
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------ state
    def _check_compatible(self, saved: dict, config: Config, info: DatasetInfo | None = None) -> None:
        """Refuse, in one sentence naming the keys, a checkpoint of another model, optimiser or data."""
        old, new = to_dict(from_dict(saved["config"])), to_dict(config)
        if info is None:  # before loading data: the keys that fix the weights' and optimiser state's shapes
            pairs = {f"model.{k}": (old["model"].get(k), new["model"].get(k)) for k in old["model"] | new["model"]}
            pairs["data.name"] = (old["data"]["name"], new["data"]["name"])
            pairs["optim.optimizer"] = (old["optim"]["optimizer"], new["optim"]["optimizer"])
        else:  # after: the image shape and bit depth the data gives
            pairs = {f"data {k}": (saved["data_info"].get(k), v) for k, v in dataclasses.asdict(info).items()}
        diffs = [f"{key}={a!r} there but {b!r} here" for key, (a, b) in sorted(pairs.items())
                 if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)]
        if diffs:
            raise ckpt_io.CheckpointError(
                f"{self.out / 'checkpoint.pt'} comes from another model or config ({'; '.join(diffs)}), so this "
                f"run cannot resume it: use the same preset and keys, or a fresh --out folder (or --fresh)."
            )

    def state_dict(self) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "library_version": ckpt_io.library_version(),
            "config": to_dict(self.config),
            "data_info": dataclasses.asdict(self.info),
            "step": self.step,
            "total_skips": self.total_skips,
            "consecutive_skips": self.consecutive_skips,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": [ckpt_io.rng_state()],  # one entry per rank once gathered (see save)
            "world_size": self.world,
        }

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
        rngs = saved["rng"]
        ckpt_io.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    def save(self) -> None:
        state = self.state_dict()
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, state["rng"][0])
            state["rng"] = gathered
        if self.is_main:
            ckpt_io.save_atomic(state, self.out / "checkpoint.pt")

    # ------------------------------------------------------------------ one step
    def autocast(self):
        dtype = PRECISIONS[self.config.run.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def loss(self, x: torch.Tensor, step: int):
        """Training loss (KL warm-up, free bits, balancing applied) and the exact ELBO terms."""
        o = self.config.optim
        with self.autocast():
            out = self.ddp(x)
        terms = elbo(out, self.info.num_dims)
        beta = kl_warmup_beta(step, o.kl_warmup_steps, o.kl_warmup_start)
        extras = out.extras or {}
        sizes = extras.get("kl_balance_alpha", extras.get("group_sizes"))  # NVAE's per-group prior weights
        kl_term = kl_objective(out.kl_per_group, beta, o.free_bits, o.kl_balancing, sizes)
        regulariser = self.model.regularization(step) if hasattr(self.model, "regularization") else 0.0
        loss = terms.recon + kl_term + regulariser
        return (loss / self.info.num_dims if o.loss_per_dim else loss), terms, beta

    def train_step(self) -> dict:
        o = self.config.optim
        x = self.batches.get(self.step).to(self.device)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, beta = self.loss(x, self.step)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip or float("inf"))
        bad = should_skip(loss.detach(), grad_norm, o.skip_threshold)
        if self.world > 1:  # every rank must agree, or the replicas drift apart
            dist.all_reduce(bad := bad.float(), op=dist.ReduceOp.MAX)
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
            self._update_ema()
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

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        rate = self.config.optim.ema_rate
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - rate)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # ------------------------------------------------------------------ evaluation and samples
    @property
    def eval_model(self):
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, max_batches: int = 0) -> dict:
        """Negative ELBO on the test split (EMA weights when present), in nats/image and bits/dim."""
        model = self.eval_model
        was_training = model.training
        model.eval()
        total = torch.zeros(2, device=self.device)  # (sum of -ELBO, images)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(1234 + self.rank)
            n = len(self.data.test)
            bs = self.config.optim.batch_size // self.world
            for i, start in enumerate(range(self.rank * bs, n, bs * self.world)):
                if max_batches and i >= max_batches:
                    break
                x = torch.stack([self.data.test[j][0] for j in range(start, min(start + bs, n))]).to(self.device)
                with self.autocast():
                    out = model(x)
                total += torch.stack([-elbo(out, self.info.num_dims).elbo.sum(), torch.tensor(x.shape[0], device=self.device)])
        if self.world > 1:
            dist.all_reduce(total)
        model.train(was_training)
        nats = (total[0] / total[1]).item()
        return {"test_neg_elbo_nats": nats, "test_bpd": nats_to_bpd(nats, self.info.num_dims), "test_images": int(total[1])}

    @torch.no_grad()
    def write_samples(self) -> None:
        if not self.is_main:
            return
        r = self.config.run
        model = self.eval_model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(r.seed)
            images = model.sample(r.num_samples, temperature=r.sample_temperature)
        model.train(was_training)
        save_grid(images, self.out / "samples.png")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        c, r = self.config, self.config.run
        self.out.mkdir(parents=True, exist_ok=True)
        logger = RunLog(self.out, enabled=self.is_main, resume_step=self.step)
        if self.is_main:
            (self.out / "config").write_text(describe(c))
        bar = tqdm(total=c.optim.max_steps, initial=self.step, disable=r.quiet or not self.is_main,
                   desc=f"{c.model.family} on {c.data.name}", dynamic_ncols=True)
        window: list[dict] = []
        self.model.train()
        while self.step < c.optim.max_steps:
            window.append(self.train_step())
            bar.update(1)
            if self.step % r.log_every == 0 or self.step == c.optim.max_steps:
                record = self._summarise(window)
                window = []
                logger.write(record, self.step)
                bar.set_postfix(loss=f"{record['loss']:.1f}", bpd=f"{record['bpd']:.3f}",
                                skipped=self.total_skips, img_s=f"{record['images_per_s']:.0f}")
            if r.eval_every and self.step % r.eval_every == 0 and self.step < c.optim.max_steps:
                logger.write({"split": "test", **self.evaluate(r.eval_batches)}, self.step)
            if r.sample_every and self.step % r.sample_every == 0:
                self.write_samples()
            if r.checkpoint_every and self.step % r.checkpoint_every == 0:
                self.save()
        bar.close()
        self.save()
        self.write_samples()
        final = {"step": self.step, "split": "test", **self.evaluate()}
        logger.write(final, self.step)
        if self.is_main:
            (self.out / "results.json").write_text(json.dumps(final, indent=2) + "\n")
        logger.close()
        return final

    def _summarise(self, window: list[dict]) -> dict:
        keys = ("loss", "recon", "kl", "bpd", "grad_norm")
        stats = torch.tensor([[w[k] for k in keys] for w in window]).mean(0)
        kl_groups = torch.stack([w["kl_per_group"] for w in window]).mean(0)
        extra = torch.tensor([sum(w["skipped"] for w in window), sum(w["seconds"] for w in window)])
        if self.world > 1:
            dist.all_reduce(stats)
            stats /= self.world
            dist.all_reduce(kl_groups)
            kl_groups /= self.world
        record = {"step": self.step, "split": "train", **dict(zip(keys, stats.tolist()))}
        record.update(kl_per_group=kl_groups.tolist(), skipped=int(extra[0]), lr=self.scheduler.get_last_lr()[0],
                      kl_weight=window[-1]["kl_weight"],
                      images_per_s=sum(w["images"] for w in window) / max(float(extra[1]), 1e-9))
        return record
