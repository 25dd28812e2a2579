"""What a trained model does with its latents: encode, decode, reconstruct, interpolate, and decode
with the posterior down to each level and the prior below (Chapter 7; ``python -m hvae_lib.latents``).

Every function reads a model through the latent interface of :mod:`hvae_lib.models.base`
(``latent_shapes``, ``encoder_features``, ``posterior_latents``, ``decode_latents``), so it works on
the ConvVAE (one group), the Ladder VAE, NVAE and the Very Deep VAE alike, trained by the engine or
imported from openai's weights. Groups are numbered top first, as everywhere in the library.

A *level* is a set of top groups: by resolution, every group whose resolution is at most r (the
Very Deep VAE paper's Fig. 4 cuts its hierarchy this way); by group, the top k groups.
:func:`decode_by_level` draws each row's posterior groups afresh inside the top-down pass (draw j of
every row after the seed ``seed + j``), where the official ``forward_samples_set_latents`` replays
latents stored once: per image and draw both follow q for the top groups and p below, and two rows
differ only in which groups read the image.

Random numbers: every function runs on a forked generator seeded with ``seed``, so the same call
gives the same images and the caller's random stream is left as it was; the model's train/eval
mode is restored too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch

PIXELS = ("mean", "sample")
LEVELS = ("resolution", "group")
METHODS = ("slerp", "lerp")
RESTS = ("posterior", "prior")


# ---------------------------------------------------------------------------------------------- checks
def latent_shapes(model) -> list[tuple[int, ...]]:
    """The shape of every group's z without the batch, top first, or one sentence when the model has
    no latent interface."""
    try:
        return model.latent_shapes()
    except (AttributeError, NotImplementedError):
        raise ValueError(f"{type(model).__name__} has no latent interface (latent_shapes, posterior_latents, "
                         f"decode_latents); pass a model of hvae_lib.models (ConvVAE, LadderVAE, NVAE, VDVAE).") from None


def latent_resolutions(model) -> list[int]:
    """The resolution of every latent group, top first (a group (Z, h, w) has resolution h)."""
    shapes = getattr(model, "group_shapes", None)
    if not shapes:
        raise ValueError(f"{type(model).__name__} has no group_shapes; levels by resolution need a hierarchical "
                         f"model whose latent groups have spatial shapes (Z, h, w), such as VDVAE or NVAE.")
    return [int(shape[1]) for shape in shapes]


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def check_num_groups(model, num_groups: int | None) -> int:
    """``num_groups`` (None: all), after checking it is a count of the model's groups."""
    total = len(latent_shapes(model))
    if num_groups is None:
        return total
    if not 0 <= num_groups <= total:
        raise ValueError(f"The number of top groups must be between 0 and {total} (this {type(model).__name__}'s "
                         f"latent groups), got {num_groups}.")
    return num_groups


def default_level_kind(model) -> str:
    """"resolution" when the groups have spatial shapes at more than one resolution, else "group"."""
    shapes = latent_shapes(model)
    return "resolution" if all(len(s) == 3 for s in shapes) and len({s[1] for s in shapes}) > 1 else "group"


def level_cuts(model, by: str = "resolution") -> list[tuple[int, int]]:
    """The levels of ``model``, top first: [(label, number of top groups through it)].

    By resolution the label is the resolution r and the count the groups whose resolution is at most r;
    by group the label and the count are k = 1 .. L.
    """
    check_choice("by", by, LEVELS)
    total = len(latent_shapes(model))
    if by == "group":
        return [(k, k) for k in range(1, total + 1)]
    resolutions = latent_resolutions(model)
    if resolutions != sorted(resolutions):
        raise ValueError(f"The latent groups' resolutions {resolutions} do not rise from the top down, so 'every group "
                         f"up to resolution r' is not a set of top groups; use levels by group instead.")
    return [(r, sum(1 for s in resolutions if s <= r)) for r in sorted(set(resolutions))]


def per_group_temperatures(model, temperature: float | Sequence[float], by: str) -> list[float]:
    """The temperature of every group, top first, from one number or one per level (:func:`level_cuts`)."""
    cuts = level_cuts(model, by)
    if isinstance(temperature, (int, float)):
        return [float(temperature)] * cuts[-1][1]
    temperatures = [float(t) for t in temperature]
    if len(temperatures) != len(cuts):
        raise ValueError(f"A temperature per level needs {len(cuts)} values (levels by {by}: "
                         f"{', '.join(str(label) for label, _ in cuts)}), got {len(temperatures)}.")
    out, start = [], 0
    for t, (_, through) in zip(temperatures, cuts):
        out += [t] * (through - start)
        start = through
    return out


@contextmanager
def _evaluating(model, device):
    """``model`` in eval mode on a forked random generator; mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pixels(px, pixels: str) -> torch.Tensor:
    return px.mean() if pixels == "mean" else px.sample()  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------- verbs
@torch.no_grad()
def encode(model, x: torch.Tensor, use_mean: bool = True, seed: int = 0) -> list[torch.Tensor]:
    """z of every group for images ``x`` (B, C, H, W), top first: the posterior's mean (each group's
    mean given the means above) or, with ``use_mean=False``, one draw from q(z_l | z_<l, x)."""
    latent_shapes(model)
    device = _device(model)
    with _evaluating(model, device):
        torch.manual_seed(seed)
        return [z.detach() for z in model.posterior_latents(x.to(device), use_mean=use_mean)]


def check_latents(model, latents: Sequence[torch.Tensor]) -> None:
    """One sentence when ``latents`` are not the top groups of this model (count and shapes)."""
    shapes = latent_shapes(model)
    got = [tuple(z.shape[1:]) for z in latents]
    if len(got) > len(shapes) or any(g != s for g, s in zip(got, shapes)) or len({z.shape[0] for z in latents}) > 1:
        raise ValueError(f"These latents do not fit this {type(model).__name__}: it has {len(shapes)} groups of shapes "
                         f"{shapes} (top first), the latents are {len(got)} of shapes {got}; encode with the same "
                         f"checkpoint.")


@torch.no_grad()
def decode(model, latents: Sequence[torch.Tensor], num_groups: int | None = None, draws: int = 1,
           temperature: float | Sequence[float] = 1.0, pixels: str = "mean", seed: int = 0) -> torch.Tensor:
    """Images (draws, B, C, H, W) from the top ``num_groups`` of ``latents`` (default: all given) and
    the prior at ``temperature`` below (one number, or one per group); draw j after seed + j."""
    check_latents(model, latents)
    check_choice("pixels", pixels, PIXELS)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    num_groups = len(latents) if num_groups is None else check_num_groups(model, num_groups)
    if num_groups > len(latents):
        raise ValueError(f"Decoding the top {num_groups} groups needs their latents, but only {len(latents)} are given.")
    device = _device(model)
    given = [z.to(device) for z in latents[:num_groups]]
    n = latents[0].shape[0] if latents else 1
    rows = []
    with _evaluating(model, device):
        for j in range(draws):
            torch.manual_seed(seed + j)
            rows.append(_pixels(model.decode_latents(given, n=n, temperature=temperature), pixels))
    return torch.stack(rows)  # (draws, B, C, H, W)


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, num_groups: int | None = None, use_mean: bool = True, draws: int = 1,
                temperature: float | Sequence[float] = 1.0, pixels: str = "mean", seed: int = 0) -> torch.Tensor:
    """Images (draws, B, C, H, W) decoded from the top ``num_groups`` groups of ``x``'s latents
    (default: all, a reconstruction; the posterior's mean, or a draw with ``use_mean=False``) and the
    prior below at ``temperature``."""
    num_groups = check_num_groups(model, num_groups)
    latents = encode(model, x, use_mean, seed)[:num_groups]
    if not latents:  # no group from the posterior: plain samples, as many as images
        return sample_like(model, x.shape[0], draws, temperature, pixels, seed)
    return decode(model, latents, num_groups, draws, temperature, pixels, seed)


@torch.no_grad()
def sample_like(model, n: int, draws: int = 1, temperature: float | Sequence[float] = 1.0, pixels: str = "mean",
                seed: int = 0) -> torch.Tensor:
    """Images (draws, n, C, H, W) with every group from the prior at ``temperature``."""
    device = _device(model)
    rows = []
    with _evaluating(model, device):
        for j in range(draws):
            torch.manual_seed(seed + j)
            rows.append(_pixels(model.decode_latents(None, n=n, temperature=temperature), pixels))
    return torch.stack(rows)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) a + t b."""
    return torch.lerp(a, b, t)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of every image's latent vector (dim 0 is the batch; the rest is one vector):

        sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b,   w = the angle between a and b,

    which keeps a latent drawn from N(0, I) at a typical norm where the straight line passes near the
    origin; linear where a and b are (anti)parallel."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()  # (B, D)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-30)
    omega = torch.arccos(cos.clamp(-1, 1))  # (B,)
    sin = torch.sin(omega)
    safe = sin.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, sin, 1.0), torch.full_like(sin, 1 - t))
    wb = torch.where(safe, torch.sin(t * omega) / torch.where(safe, sin, 1.0), torch.full_like(sin, t))
    return (wa[:, None] * fa + wb[:, None] * fb).to(a.dtype).view_as(a)


@torch.no_grad()
def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, num_groups: int = 1,
                rest: str = "posterior", method: str = "slerp", temperature: float | Sequence[float] = 1.0,
                pixels: str = "mean", seed: int = 0) -> torch.Tensor:
    """Images (steps, B, C, H, W) from x_a (step 0) to x_b (last step), B pairs at once.

    The top ``num_groups`` groups' posterior means are interpolated (``method`` slerp or lerp, at
    t = 0, 1/(steps - 1), ..., 1). The groups below follow ``rest``: "posterior", their posterior
    means interpolated the same way (so both ends are the reconstructions); "prior", drawn from
    p(z_l | z_<l) at ``temperature`` with the same noise at every step (the seed is reset before
    each), so the images change only through the top groups.
    """
    check_choice("rest", rest, RESTS)
    check_choice("method", method, METHODS)
    num_groups = check_num_groups(model, num_groups)
    if num_groups < 1:
        raise ValueError("Interpolation needs at least one top group to interpolate, got 0.")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two ends), got {steps}.")
    if x_a.shape != x_b.shape:
        raise ValueError(f"interpolate takes two batches of the same shape, got {tuple(x_a.shape)} and "
                         f"{tuple(x_b.shape)}.")
    la, lb = encode(model, x_a, True, seed), encode(model, x_b, True, seed)
    mix = slerp if method == "slerp" else lerp
    keep = len(la) if rest == "posterior" else num_groups
    frames = []
    for i in range(steps):
        t = i / (steps - 1)
        latents = [mix(a, b, t) for a, b in zip(la[:keep], lb[:keep])]
        frames.append(decode(model, latents, keep, 1, temperature, pixels, seed)[0])  # same seed: same prior noise
    return torch.stack(frames)  # (steps, B, C, H, W)


@torch.no_grad()
def decode_by_level(model, x: torch.Tensor, draws: int, seed: int = 0, temperature: float | Sequence[float] = 1.0,
                    pixels: str = "mean", by: str = "resolution") -> tuple[list[int], torch.Tensor]:
    """Decode ``x`` with the posterior in the groups of every level and above and the prior below,
    for every level (the Very Deep VAE paper's Fig. 4; Chapter 7).

    Row 0 takes no group from the posterior (plain samples); row k (k >= 1) takes the groups through
    the k-th level (:func:`level_cuts`) from q(z|x) and the rest from the prior at ``temperature``
    (one number, or one per level: the prior groups of level i get the i-th); the last row is the
    posterior everywhere (a reconstruction). ``pixels`` is "mean" (the likelihood's mean image) or
    "sample" (pixels drawn from it, as ``model.sample``).

    Returns (cuts, images): ``cuts`` = [0, label_1, ..., label_K] (0: no posterior group; labels are
    resolutions, or group counts with ``by="group"``) and ``images`` of shape (K + 1, draws, B, C, H, W).
    Draw j of every row is made after ``torch.manual_seed(seed + j)``, so row 0 equals
    ``model.sample(B)`` and the last row (with ``pixels="mean"``) ``model.reconstruct(x)`` after the
    same seed.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1 (the number of prior draws per row), got {draws}.")
    check_choice("pixels", pixels, PIXELS)
    cuts = level_cuts(model, by)
    temperatures = per_group_temperatures(model, temperature, by)
    model.check_input(x)
    device = _device(model)
    x = x.to(device)
    rows = []
    with _evaluating(model, device):
        features = model.encoder_features(x)  # deterministic: once for every row and draw
        for num_posterior in [0, *(through for _, through in cuts)]:
            row = []
            for j in range(draws):
                torch.manual_seed(seed + j)
                px = model.decode_latents(None, n=x.shape[0], temperature=temperatures, features=features,
                                          num_posterior=num_posterior)
                row.append(_pixels(px, pixels))  # (B, C, H, W)
            rows.append(torch.stack(row))  # (draws, B, C, H, W)
    return [0, *(label for label, _ in cuts)], torch.stack(rows)  # (K + 1, draws, B, C, H, W)


def level_names(cuts: Sequence[int], by: str = "resolution") -> list[str]:
    """Row labels for :func:`decode_by_level`'s cuts: "prior everywhere", "posterior to 7×7", ..."""
    if by == "resolution":
        return ["prior everywhere"] + [f"posterior to {r}×{r}" for r in cuts[1:]]
    return ["prior everywhere"] + [f"posterior in top {k}" for k in cuts[1:]]


def latent_summary(latents: Sequence[torch.Tensor]) -> list[dict]:
    """Per group: its shape, and the root mean square of its latents over the batch (a quick look at
    how far the codes are from the prior's N(0, I) scale)."""
    return [{"group": l, "shape": tuple(z.shape[1:]), "rms": float(z.float().pow(2).mean().sqrt()),
             "dims": math.prod(z.shape[1:])} for l, z in enumerate(latents)]
