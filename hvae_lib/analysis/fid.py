"""FID and KID of a model's samples against a dataset's training images (``python -m hvae_lib.fid``).

The metrics are torch-fidelity's (Obukhov et al.): its InceptionV3 is the TensorFlow Inception of
the original FID code ported bit for bit, it registers custom feature extractors
(``torch_fidelity.register_feature_extractor``), takes a generative model as an input
(``GenerativeModelBase``) and a dataset as the other, caches a dataset's features and statistics
under a name, and loads its weights from a local file (``feature_extractor_weights_path``) where
there is no network. clean-fid also computes both metrics, but its feature extractor is a callable
passed per call rather than registered, and its last release is from 2022.

NVAE's protocol is the default (its ``evaluate.py --eval_mode=evaluate_fid --temp=0.6 --readjust_bn``,
pytorch-fid copied into the repository): 50,000 samples at temperature 0.6 with BatchNorm
re-estimated at that temperature first (:mod:`hvae_lib.layers.bn_readjust`, 500 passes of 16
samples), against the training images. Deliberate differences: the reference statistics are those
of the images the run trained on, as the loader serves them (its ``train_limit`` applies), cached
per dataset, resolution and bit depth; grey images are repeated to three channels and every image
is rounded to 8 bits, as Inception takes them.

:func:`frechet_distance` is the closed form the library evaluates,
FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), written out for the tests to compare with.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import Dataset

from hvae_lib.layers.bn_readjust import readjusted_bn

INCEPTION = "inception-v3-compat"
NVAE_PROTOCOL = {"num_samples": 50_000, "temperature": 0.6, "readjust_bn": 500}


class FidError(RuntimeError):
    """FID cannot be computed as asked: the Inception weights are missing offline, too few samples, ..."""


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] -> (B, 3, H, W) uint8, grey repeated to three channels."""
    x = torch.round(images.detach().float().clamp(0, 1) * 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def _fidelity():
    import torch_fidelity  # noqa: PLC0415 - imported on use: a second or so, and only FID needs it

    return torch_fidelity


class ReferenceImages(Dataset):
    """A dataset of (image, label) items in [0, 1] as torch-fidelity's input: uint8 (3, H, W) items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_inception_input(self.dataset[i][0].unsqueeze(0))[0]  # (3, H, W)


def model_sampler(model, temperature: float, pixels: str = "sample", seed: int = 0):
    """``model``'s samples as torch-fidelity's generative input: each call draws as many images as
    the noise it is given has rows (the noise itself is not used: the model draws its own latents
    from the torch generator, seeded with ``seed`` at the first call, so the samples do not depend
    on what ran before, such as the feature extractor's initialisation)."""
    fidelity = _fidelity()

    class ModelSampler(fidelity.GenerativeModelBase):
        def __init__(self):
            super().__init__()
            self.model, self.started = model, False

        @property
        def z_size(self):
            return 1

        @property
        def z_type(self):
            return "normal"

        @property
        def num_classes(self):
            return 0

        @torch.no_grad()
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            n = z.shape[0]
            if not self.started:
                torch.manual_seed(seed)
                self.started = True
            if pixels == "sample":
                images = self.model.sample(n, temperature)
            else:
                images = self.model.decode_latents(None, n=n, temperature=temperature).mean()
            return to_inception_input(images)  # (n, 3, H, W) uint8

    return ModelSampler()


def check_feature_extractor(name: str) -> None:
    """One sentence when ``name`` is not a feature extractor registered with torch-fidelity."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise FidError(f"Unknown feature extractor {name!r}; torch-fidelity has {', '.join(FEATURE_EXTRACTORS_REGISTRY)} "
                       f"(register another with torch_fidelity.register_feature_extractor).")


def inception_weights_file() -> Path:
    """Where torch-fidelity's Inception weights are looked for: torch hub's checkpoints folder."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def ensure_inception_weights(weights: str | Path | None = None) -> str:
    """The path of the Inception weights: ``weights`` if given, else torch hub's copy, downloaded by
    torch-fidelity on first use; where there is neither file nor network, one sentence naming the
    file and where it goes."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if weights is not None:
        if not Path(weights).is_file():
            raise FidError(f"No Inception weights at {weights}; pass the file {inception_weights_file().name}.")
        return str(weights)
    target = inception_weights_file()
    if not target.is_file():
        try:
            torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=True)
        except Exception as err:  # no network, a proxy, a half download: say what to do instead
            raise FidError(
                f"FID needs torch-fidelity's Inception weights {target.name}, which are not on this machine and could "
                f"not be downloaded ({type(err).__name__}); fetch {URL_INCEPTION_V3} elsewhere and place it at "
                f"{target} (or pass --inception-weights PATH).") from None
    return str(target)


def reference_name(info, num_images: int, split: str = "train") -> str:
    """The cache name of a dataset's reference features: dataset, resolution, bit depth, split and size."""
    c, h, w = info.image_shape
    return f"hvae-{info.name}-{h}x{w}-{info.bits}bit-{split}{num_images}"


def fid_kid(model, reference: Dataset, name: str, num_samples: int = 50_000, temperature: float = 0.6,
            readjust_bn: int = 500, batch_size: int = 100, seed: int = 0, cache_dir: str | Path | None = None,
            feature_extractor: str = INCEPTION, weights: str | Path | None = None, kid: bool = True,
            pixels: str = "sample", verbose: bool = True) -> dict:
    """FID (and KID) of ``num_samples`` samples of ``model`` at ``temperature`` against ``reference``
    (a dataset of (image, label) items in [0, 1]) with torch-fidelity.

    BatchNorm is re-estimated at the temperature on ``readjust_bn`` passes first (0: not; models
    without BatchNorm need none). The reference's features and statistics are cached in
    ``cache_dir`` under ``name`` and the feature extractor's name, so a second call reads them; the
    samples are never cached. ``feature_extractor`` is any name registered with torch-fidelity;
    KID uses subsets of min(1000, num_samples, len(reference)) images. The samples are drawn on a
    forked generator seeded with ``seed``. Returns {"fid", "kid", "kid_std"} (KID without ``kid``: absent).
    """
    fidelity = _fidelity()
    check_feature_extractor(feature_extractor)
    if num_samples < 2 or len(reference) < 2:
        raise FidError(f"FID needs at least 2 samples and 2 reference images (a covariance each), got "
                       f"{num_samples} and {len(reference)}.")
    if feature_extractor == INCEPTION:
        weights = ensure_inception_weights(weights)
    device = next(model.parameters()).device
    options = dict(
        input1=model_sampler(model, temperature, pixels, seed), input1_model_num_samples=num_samples,
        input2=ReferenceImages(reference), input2_cache_name=name, fid=True, kid=kid,
        kid_subset_size=min(1000, num_samples, len(reference)), feature_extractor=feature_extractor,
        cuda=device.type == "cuda", batch_size=batch_size, save_cpu_ram=True, rng_seed=seed, verbose=verbose,
        cache=cache_dir is not None, cache_root=None if cache_dir is None else str(cache_dir))
    if weights is not None:
        options["feature_extractor_weights_path"] = str(weights)
    bn = readjusted_bn(model, temperature, readjust_bn) if readjust_bn > 0 else nullcontext()
    was_training = model.training
    try:
        with bn, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            metrics = fidelity.calculate_metrics(**options)
    finally:
        model.train(was_training)
    out = {"fid": metrics["frechet_inception_distance"]}
    if kid:
        out.update(kid=metrics["kernel_inception_distance_mean"], kid_std=metrics["kernel_inception_distance_std"])
    return out


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2) -> float:
    """|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^(1/2) S_2 S_1^(1/2))^(1/2)), in float64 (the Fréchet
    distance of two Gaussians; S_1^(1/2) S_2 S_1^(1/2) has the eigenvalues of S_1 S_2 and is symmetric)."""
    mu_1, mu_2 = torch.as_tensor(mu_1, dtype=torch.float64), torch.as_tensor(mu_2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma_1, dtype=torch.float64), torch.as_tensor(sigma_2, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(s1)
    root_1 = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_1 @ s2 @ root_1).clamp_min(0).sqrt().sum()
    return float(((mu_1 - mu_2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * middle)
