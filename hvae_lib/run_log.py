"""What a run reads and writes besides the model: its batches, and its metrics log.

- :class:`GlobalBatches`: batch ``step`` of training is a fixed slice of a seeded per-epoch
  permutation, optionally flipped left-right at random (seeded by the step too), so a resumed run
  replays exactly the batches of an uninterrupted one.
- :class:`RunLog`: ``metrics.jsonl`` and TensorBoard events, written by the main process only.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .config import ConfigError


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
        if batch_size % world:
            raise ConfigError(f"optim.batch_size={batch_size} must be divisible by the {world} processes.")
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
    logged once; TensorBoard does the same with ``purge_step``.
    """

    def __init__(self, out: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.file, self.tb = None, None
        if enabled:
            path = out / "metrics.jsonl"
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
                (tmp := out / ".metrics.jsonl.tmp").write_text("".join(line + "\n" for line in kept))
                os.replace(tmp, path)
            self.file = open(path, "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is a declared dependency; stay useful without it
                self.tb = None

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **record}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut short by a crash, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
