"""Pictures a student would rather look at than read: image grids, KL bars, training curves."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> one (C, H', W') grid, about square by default."""
    nrow = nrow or max(1, int(round(images.shape[0] ** 0.5)))
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), str(path))


def show_grid(images: torch.Tensor, title: str = "", nrow: int | None = None, ax=None):
    """Draw a grid of images with matplotlib."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow)  # (3, H', W'): make_grid repeats a single channel
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")
    return ax


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_kl_per_group(kl_per_group, ax=None, title: str = "KL per latent group"):
    """Bar chart of nats per group (Chapters 2-4)."""
    import matplotlib.pyplot as plt

    kl = torch.as_tensor(kl_per_group).float().cpu()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(kl)), kl.numpy())
    ax.set_xlabel("latent group (top = 0)")
    ax.set_ylabel("KL (nats / image)")
    ax.set_title(title)
    return ax


def earlier_run_bpd(run_dir: str | Path, fallback: float) -> tuple[float, str]:
    """(test bits/dim, where it comes from) of an earlier chapter's run in ``run_dir``, or
    ``fallback``, the figure that chapter states, when the run is not there (Chapters 4 and 6)."""
    path = Path(run_dir) / "results.json"
    if path.exists():
        return json.loads(path.read_text())["test_bpd"], f"from {path.as_posix()}"
    return fallback, "the figure stated in its chapter (run not found)"


def plot_where_it_stands(results: dict[str, tuple[float, str]], height: float = 2.4):
    """Print and draw the test bits/dim of the course's models, ``{name: (bpd, source)}``, as
    horizontal bars, the first name at the top (Chapters 4 and 6)."""
    import matplotlib.pyplot as plt

    for name, (bpd, source) in results.items():
        print(f"{name:22s} {bpd:.3f} bits/dim   ({source})")
    plt.figure(figsize=(7, height))
    names, values = list(results)[::-1], [bpd for bpd, _ in list(results.values())[::-1]]
    plt.barh(names, values)
    for i, value in enumerate(values):
        plt.text(value, i, f" {value:.3f}", va="center")
    plt.xlabel("test negative ELBO (bits/dim, lower is better)")
    plt.xlim(min(values) - 0.3, max(values) + 0.15)
    plt.tight_layout()
