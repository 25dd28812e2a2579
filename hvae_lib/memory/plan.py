"""Choosing the batch size, precision and gradient checkpointing for a GPU (Chapter 5, "a recipe").

A training step's peak memory is, to a good approximation, linear in the batch size B:

    M(B) = fixed + B * per_image

``fixed`` holds the weights, their gradients, the optimiser's state and whatever else does not
grow with the batch; ``per_image`` is the activations one image leaves for the backward pass.
Both depend on the *setting* (precision, checkpointing), so they are fitted per setting from
measured peaks (``benchmarks/gpu_results.json``, written by ``benchmarks/engine_gpu.py --json``).
The recipe then asks: on this GPU, which setting runs the wanted global batch fastest, on as few
GPUs as possible?
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
# Bytes per parameter that do not depend on the batch: fp32 weights, fp32 gradients and the two
# per-parameter tensors of Adam(ax). Autocast keeps the weights in fp32 and casts per op.
BYTES_PER_PARAMETER = 4 + 4 + 2 * 4
REQUIRED_KEYS = ("preset", "setting", "precision", "grad_checkpointing", "batch", "peak_gib", "step_ms")


@dataclass(frozen=True)
class SettingCost:
    """One setting's costs as lines in the batch size B: peak memory fixed_bytes + B * per_image_bytes,
    step time step_seconds_fixed + B * step_seconds_per_image (None when never timed)."""

    setting: str
    precision: str
    grad_checkpointing: bool
    fixed_bytes: float
    per_image_bytes: float
    step_seconds_fixed: float | None = None
    step_seconds_per_image: float | None = None

    def memory(self, batch: int) -> float:
        """Predicted peak bytes of a training step at ``batch`` images."""
        return self.fixed_bytes + batch * self.per_image_bytes

    def step_seconds(self, batch: int) -> float | None:
        """Predicted seconds per training step at ``batch`` images (None when never timed)."""
        if self.step_seconds_per_image is None:
            return None
        return self.step_seconds_fixed + batch * self.step_seconds_per_image

    def max_batch(self, budget_bytes: float) -> int:
        """The largest batch whose predicted peak fits ``budget_bytes`` (0 if not even one image)."""
        if self.per_image_bytes <= 0:
            raise ValueError(f"{self.setting}: per-image memory must be positive, got {self.per_image_bytes:.3g} bytes.")
        return max(0, math.floor((budget_bytes - self.fixed_bytes) / self.per_image_bytes))


def read_gpu_results(path: str | Path) -> list[dict]:
    """The ``runs`` of a GPU results file (``benchmarks/gpu_results.json``), each checked for the
    keys the recipe needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; it is written by benchmarks/engine_gpu.py --json {path.name}.")
    try:
        runs = json.loads(path.read_text())["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a GPU results file (a JSON object with a 'runs' list): {err}.") from None
    for i, run in enumerate(runs):
        missing = [k for k in REQUIRED_KEYS if k not in run]
        if missing:
            raise ValueError(f"{path}: run {i} lacks {', '.join(missing)}; every run needs {', '.join(REQUIRED_KEYS)}.")
    return runs


def fit_costs(runs: list[dict], num_parameters: int | None = None) -> list[SettingCost]:
    """Fit M(B) per setting from measured runs of one model (dicts with ``setting``, ``precision``,
    ``grad_checkpointing``, ``batch``, ``peak_gib`` and ``step_ms``). Runs without a peak (out of
    memory, or not recorded) and runs marked ``superseded`` are left out.

    With two or more batch sizes each line is a least-squares fit (the time line's slope and
    intercept kept >= 0: a host-bound GPU step takes about as long at any batch). With one batch,
    memory's ``fixed`` is ``BYTES_PER_PARAMETER * num_parameters`` and the rest is per image, and the
    step time is taken as proportional to the batch (the cautious guess for larger batches).
    """
    by_setting: dict[str, list[dict]] = {}
    for run in runs:
        if run.get("peak_gib") is not None and not run.get("superseded"):
            by_setting.setdefault(run["setting"], []).append(run)
    costs = []
    for setting, rows in by_setting.items():
        batches = [float(r["batch"]) for r in rows]
        peaks = [float(r["peak_gib"]) * GIB for r in rows]
        if len(set(batches)) >= 2:
            fixed, slope = _line(batches, peaks)
        elif num_parameters is not None:
            fixed = BYTES_PER_PARAMETER * num_parameters
            slope = (sum(peaks) / len(peaks) - fixed) / batches[0]
        else:
            raise ValueError(f"{setting} was measured at one batch size only ({int(batches[0])}); pass "
                             f"num_parameters so the batch-independent part can be estimated.")
        timed = [(float(r["batch"]), r["step_ms"] / 1000) for r in rows if r.get("step_ms")]
        t_fixed = t_slope = None
        if len({b for b, _ in timed}) >= 2:
            t_fixed, t_slope = _line(*zip(*timed))
            if t_slope < 0 or t_fixed < 0:  # noise: keep the line physical
                t_slope = max(t_slope, 0.0)
                mean_b, mean_t = (sum(v) / len(v) for v in zip(*timed))
                t_fixed = max(mean_t - t_slope * mean_b, 0.0)
                t_slope = t_slope if t_fixed > 0 else mean_t / mean_b
        elif timed:
            t_fixed, t_slope = 0.0, sum(t / b for b, t in timed) / len(timed)
        costs.append(SettingCost(setting, rows[0]["precision"], bool(rows[0]["grad_checkpointing"]), fixed, slope,
                                 t_fixed, t_slope))
    return costs


def _line(xs, ys) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


@dataclass
class Suggestion:
    """What to run: a setting, the batch per GPU and how many GPUs, with the predicted peak."""

    cost: SettingCost
    batch_per_gpu: int
    num_gpus: int
    memory_bytes: float
    reason: str
    alternatives: list[tuple[str, int, int]] = field(default_factory=list)  # (setting, batch per GPU, GPUs)

    def __str__(self) -> str:
        return (f"{self.cost.setting}, {self.batch_per_gpu} images per GPU on {self.num_gpus} GPU(s), "
                f"about {self.memory_bytes / GIB:.1f} GiB each: {self.reason}")


def _speed_key(cost: SettingCost, batch: int):
    # Fastest predicted step first; untimed settings after, preferring no recomputation.
    seconds = cost.step_seconds(batch)
    return (seconds is None, seconds or 0.0, cost.grad_checkpointing)


def suggest_settings(gpu_bytes: float, costs: list[SettingCost], global_batch: int, headroom: float = 0.1,
                     bf16_supported: bool = True, max_gpus: int = 64) -> Suggestion:
    """The recipe (Chapter 5): the fewest GPUs of ``gpu_bytes`` each that hold ``global_batch``
    images, and on that many GPUs the setting with the fastest predicted step that fits.

    ``headroom`` is the fraction of the GPU kept free (CUDA context, cuDNN workspaces, allocator
    fragmentation). Without bf16 (GPUs before Ampere) the bf16 settings are left out: use fp16 with
    loss scaling there, as NVAE did on V100s.
    """
    if not 0 <= headroom < 1 or gpu_bytes <= 0 or global_batch < 1:
        raise ValueError(f"need gpu_bytes > 0, global_batch >= 1 and headroom in [0, 1); got {gpu_bytes}, "
                         f"{global_batch}, {headroom}.")
    usable = gpu_bytes * (1 - headroom)
    candidates = [c for c in costs if bf16_supported or c.precision != "bf16"]
    if not candidates:
        raise ValueError("no setting to choose from (without bf16 support, measure fp32 or fp16 settings).")
    for num_gpus in range(1, max_gpus + 1):
        per_gpu = math.ceil(global_batch / num_gpus)
        fitting = sorted((c for c in candidates if c.memory(per_gpu) <= usable), key=lambda c: _speed_key(c, per_gpu))
        if fitting:
            best = fitting[0]
            if num_gpus == 1:
                reason = "the whole batch fits on one GPU" + (", and this is the fastest setting that holds it"
                                                               if len(fitting) > 1 else ", and only with this setting")
            else:
                reason = (f"no setting holds {global_batch} images on one GPU; {num_gpus} GPUs share the batch "
                          f"(torchrun splits it)")
            alternatives = [(c.setting, c.max_batch(usable), num_gpus) for c in fitting[1:]]
            return Suggestion(best, per_gpu, num_gpus, best.memory(per_gpu), reason, alternatives)
    smallest = min(candidates, key=lambda c: c.memory(1))
    raise ValueError(f"even one image per GPU needs {smallest.memory(1) / GIB:.1f} GiB with {smallest.setting}, more "
                     f"than the {usable / GIB:.1f} GiB usable on this GPU; a smaller model is needed.")
