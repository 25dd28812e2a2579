"""What a run reads and writes besides the model: its batches, its metrics log and its progress.

- :class:`GlobalBatches`: batch ``step`` of training is a fixed slice of a seeded per-epoch
  permutation, optionally flipped left-right at random (seeded by the step too), so a resumed run
  replays exactly the batches of an uninterrupted one.
- :class:`RunLog`: ``metrics.jsonl`` and TensorBoard events, written by the main process only.
- :class:`Progress`: a progress bar in a terminal or notebook, plain lines in a file or CI log.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from hvae_lib.config.ranges import ConfigError
from hvae_lib.training.safe_write import WriteError, append_line, trim_event_file, write_atomic


def batch_split_problem(batch_size: int, world: int) -> str:
    """'' when the global batch splits evenly over ``world`` processes, else what to use instead."""
    if batch_size % world == 0:
        return ""
    near = " or ".join(str(n) for n in (batch_size - batch_size % world, batch_size - batch_size % world + world) if n)
    return (f"Config key optim.batch_size={batch_size} (the global batch) does not split over {world} processes: "
            f"use a multiple of {world}, such as {near}.")


class GlobalBatches:
    """Batch ``step`` of training = a fixed slice of a seeded per-epoch permutation.

    Because the batch is a function of (seed, step) alone, resuming at step s replays exactly the
    batches the uninterrupted run would have seen. Under DDP every rank takes its share
    (rank::world) of the same global batch.

    ``horizontal_flip``: each image of the global batch is mirrored left-right with probability 1/2
    (NVAE's ``RandomHorizontalFlip`` for CIFAR-10 and the other photographs), the coin flips drawn
    from a generator seeded by (seed, step), so they too replay exactly and a rank flips its share
    as one process would flip the whole batch.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 horizontal_flip: bool = False):
        if problem := batch_split_problem(batch_size, world):
            raise ConfigError(problem)
        self.dataset, self.batch_size, self.seed, self.rank, self.world = dataset, batch_size, seed, rank, world
        self.horizontal_flip = horizontal_flip
        self.per_epoch = len(dataset) // batch_size
        if self.per_epoch == 0:
            raise ConfigError(f"optim.batch_size={batch_size} exceeds the {len(dataset)} training images.")
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dataset), generator=g)
        batch = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        return batch[self.rank::self.world].tolist()

    def flips(self, step: int) -> torch.Tensor:
        """Which images of this rank's share of batch ``step`` are mirrored: (B,) bool."""
        g = torch.Generator().manual_seed((self.seed * 100_003 + 7) * 1_000_003 + step)  # not a permutation's seed
        return (torch.rand(self.batch_size, generator=g) < 0.5)[self.rank::self.world]

    def get(self, step: int) -> torch.Tensor:
        images = torch.stack([self.dataset[j][0] for j in self.indices(step)])  # (B, C, H, W)
        if self.horizontal_flip:
            images = torch.where(self.flips(step)[:, None, None, None], images.flip(-1), images)
        return images


class RunLog:
    """metrics.jsonl (one JSON object per line) and TensorBoard events, on the main process only.

    A run resumed at step s first drops the records after s (written after the checkpoint by a run
    that was killed, or by an earlier run in the folder when starting fresh), so every step is
    logged once; TensorBoard does the same with ``purge_step``. A write that fails (a full disk)
    leaves both files as they were before it and raises :class:`~hvae_lib.training.safe_write.WriteError`.
    """

    def __init__(self, out: Path, enabled: bool, resume_step: int | None = None):
        self.enabled, self.tb, self.events = enabled, None, None
        self.out, self.path = out, out / "metrics.jsonl"
        if resume_step is not None:
            self.open(resume_step)

    def open(self, resume_step: int = 0) -> None:
        """Drop the records after ``resume_step`` and start the event writer (nothing when disabled)."""
        if not self.enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            write_atomic(self.path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a declared dependency; stay useful without it
            return
        try:
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step)
            self.events = self.tb.file_writer.event_writer._file_name  # the file this writer appends to
        except OSError as err:
            raise WriteError(self.out / "tensorboard", err) from None

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **record}
        append_line(self.path, json.dumps(record))
        if self.tb is not None:
            split = record.get("split", "train")
            try:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tb.add_scalar(f"{split}/{k}", v, step)
                self.tb.flush()  # TensorBoard writes on a thread: surface its failure here, at this record
            except OSError as err:
                self._drop_events()
                raise WriteError(self.events, err) from None

    def _drop_events(self) -> None:
        """After a failed event write: stop the writer and cut its file back to its last whole record."""
        tb, self.tb = self.tb, None
        try:
            tb.close()
        except OSError:
            pass
        trim_event_file(self.events)

    def close(self, quietly: bool = False) -> None:
        """Close the event writer; ``quietly``: do not raise (another error is already on its way)."""
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError as err:
                self._drop_events()
                if not quietly:
                    raise WriteError(self.events, err) from None
            self.tb = None


def summarise(window: list[dict], world: int = 1) -> dict:
    """One metrics record from the per-step dicts of ``window``: means of the losses, the gradient norm
    and the KL per group (over the steps and, with ``world`` > 1, over the ranks: a collective every
    rank must call), skipped updates, and images per second."""
    keys = ("loss", "recon", "kl", "bpd", "grad_norm")
    stats = torch.tensor([[w[k] for k in keys] for w in window]).mean(0)  # (5,)
    kl_groups = torch.stack([w["kl_per_group"] for w in window]).mean(0)  # (L,)
    if world > 1:
        dist.all_reduce(stats)
        dist.all_reduce(kl_groups)
        stats, kl_groups = stats / world, kl_groups / world
    seconds = sum(w["seconds"] for w in window)
    return {**dict(zip(keys, stats.tolist())), "kl_per_group": kl_groups.tolist(),
            "skipped": sum(w["skipped"] for w in window), "kl_weight": window[-1]["kl_weight"],
            "images_per_s": sum(w["images"] for w in window) / max(seconds, 1e-9)}


class Progress:
    """Training progress on stderr: tqdm's bar in a terminal or a notebook; elsewhere (output sent to
    a file, a CI log) one plain line per logged record, at most one every ``interval_s`` seconds,
    and always the first and the last, instead of a stream of carriage returns."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, interval_s: float = 30.0):
        self.total, self.desc, self.interval_s, self.start_step = total, desc, interval_s, initial
        self.start = time.perf_counter()
        self.last_line = -math.inf
        interactive = sys.stderr.isatty() or _in_notebook()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if enabled and interactive else None
        self.lines = enabled and not interactive

    def update(self, step: int, stats: dict | None = None, last: bool = False) -> None:
        """Step ``step`` is done; ``stats`` (loss, bpd, ...) when a record was logged at it."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if stats:
                self.bar.set_postfix(stats)
        elif self.lines and stats:
            now = time.perf_counter()
            if last or now - self.last_line >= self.interval_s:
                self.last_line = now
                done, elapsed = step - self.start_step, now - self.start
                eta = _clock(elapsed / done * (self.total - step)) if done else "?"
                fields = " ".join(f"{k}={v}" for k, v in stats.items())
                print(f"{self.desc}: step {step}/{self.total} ({100 * step / self.total:.0f}%) {fields} "
                      f"elapsed {_clock(elapsed)} eta {eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut short by a crash, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
