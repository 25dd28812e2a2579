"""FID and KID through torch-fidelity, offline: its maths against closed forms on Gaussian features, and the
whole path (sampling, batching, BN readjustment, caching, results.json) with a small feature extractor of
ours registered with it in place of Inception, whose weights the tests cannot fetch."""
import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from torch import nn
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from hvae_lib import fid
from hvae_lib.analysis.fid import ReferenceImages, fid_kid, frechet_distance, to_inception_input
from hvae_lib.config import override
from hvae_lib.layers.bn_readjust import readjusted_bn
from hvae_lib.models.presets import get_preset
from hvae_lib.training.checkpoint import load_model
from hvae_lib.training.engine import Trainer, load_data


class PassThrough(torch_fidelity.FeatureExtractorBase):
    """Feature vectors in, the same vectors out: torch-fidelity's maths on features we choose."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("x",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "x"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 4)

    def forward(self, x):
        return (x.float(),)


class TinyFeatures(torch_fidelity.FeatureExtractorBase):
    """A fixed random 3x3 convolution, tanh and 2x2 average pooling: 16 features from a uint8 (B, 3, H, W)
    image, in the place of Inception's 2048."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    @staticmethod
    def get_provided_features_list():
        return ("16",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "16"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3  # what Inception takes too
        h = torch.tanh(self.conv(x.float() / 127.5 - 1))
        return (F.adaptive_avg_pool2d(h, 2).flatten(1),)  # (B, 16)


for name, cls in (("hvae-test-pass-through", PassThrough), ("hvae-test-tiny", TinyFeatures)):
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, cls)


class Vectors(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def unbiased_mmd2(x, y, degree=3, coef0=1.0):
    """Unbiased MMD^2 with KID's kernel k(a, b) = (a.b / d + coef0)^degree, written out."""
    d, m = x.shape[1], x.shape[0]
    kxx, kyy, kxy = ((a @ b.T / d + coef0) ** degree for a, b in ((x, x), (y, y), (x, y)))
    off = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_fid_and_kid_of_two_gaussian_feature_sets_match_the_closed_forms():
    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 6
    mu_1, mu_2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-0.5, 0.5, d, dtype=torch.float64)
    var_1, var_2 = torch.linspace(0.5, 2.0, d, dtype=torch.float64), torch.linspace(2.0, 0.25, d, dtype=torch.float64)
    x = (mu_1 + var_1.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    y = (mu_2 + var_2.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    metrics = torch_fidelity.calculate_metrics(
        input1=Vectors(x), input2=Vectors(y), fid=True, kid=True, feature_extractor="hvae-test-pass-through",
        cuda=False, cache=False, save_cpu_ram=True, verbose=False, batch_size=5000, kid_subsets=1,
        kid_subset_size=2000)
    got = metrics["frechet_inception_distance"]
    # diagonal covariances: |mu_1 - mu_2|^2 + sum (sqrt(var_1) - sqrt(var_2))^2
    population = float(((mu_1 - mu_2) ** 2).sum() + ((var_1.sqrt() - var_2.sqrt()) ** 2).sum())
    assert frechet_distance(mu_1, torch.diag(var_1), mu_2, torch.diag(var_2)) == pytest.approx(population, rel=1e-12)
    assert got == pytest.approx(population, rel=0.03)  # 20,000 samples of 6 dimensions
    xd, yd = x.double(), y.double()
    sample = frechet_distance(xd.mean(0), torch.cov(xd.T), yd.mean(0), torch.cov(yd.T))
    assert got == pytest.approx(sample, rel=1e-6)  # the same estimate as the sample statistics give
    assert frechet_distance(xd.mean(0), torch.cov(xd.T), xd.mean(0), torch.cov(xd.T)) == pytest.approx(0, abs=1e-9)
    # KID on one subset of 2000 from each, drawn as torch-fidelity draws it (NumPy, seed 2020)
    import numpy as np

    rng = np.random.RandomState(2020)
    ix, iy = rng.choice(n, 2000, replace=False), rng.choice(n, 2000, replace=False)
    kid = unbiased_mmd2(xd[torch.from_numpy(ix)], yd[torch.from_numpy(iy)])
    assert metrics["kernel_inception_distance_mean"] == pytest.approx(kid, rel=1e-4)
    same = torch_fidelity.calculate_metrics(
        input1=Vectors(x[:4000]), input2=Vectors(x[4000:8000]), kid=True, feature_extractor="hvae-test-pass-through",
        cuda=False, cache=False, save_cpu_ram=True, verbose=False, kid_subsets=10, kid_subset_size=1000)
    assert abs(same["kernel_inception_distance_mean"]) < 0.1 * metrics["kernel_inception_distance_mean"]


QUICK = {"max_steps": 2, "quiet": True, "eval_every": 0, "checkpoint_every": 0, "sample_every": 0, "test_limit": 16}


@pytest.fixture(scope="module")
def nvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvae")
    Trainer(override(get_preset("nvae_tiny"), QUICK), out, resume=False).fit()
    return out


def by_hand(model, reference, n, batch, temperature, passes, seed):
    """FID with the tiny features, sampling and batching as fid_kid does, the statistics by hand."""
    features = TinyFeatures("hvae-test-tiny", ["16"]).eval()
    with torch.no_grad(), readjusted_bn(model, temperature, passes), torch.random.fork_rng():
        torch.manual_seed(seed)
        fake = torch.cat([features(to_inception_input(model.sample(min(batch, n - i), temperature)))[0]
                          for i in range(0, n, batch)]).double()
        real = torch.cat([features(ReferenceImages(reference)[i][None])[0] for i in range(len(reference))]).double()
    return frechet_distance(fake.mean(0), torch.cov(fake.T), real.mean(0), torch.cov(real.T))


@pytest.mark.slow
def test_the_command_samples_batches_caches_and_records(nvae_run, tmp_path, capsys, monkeypatch):
    ckpt, cache = nvae_run / "checkpoint.pt", tmp_path / "cache"
    argv = [str(ckpt), "--n", "48", "--batch-size", "16", "--temperature", "0.7", "--readjust-bn", "3",
            "--reference-limit", "96", "--feature-extractor", "hvae-test-tiny", "--cache-dir", str(cache), "--quiet"]
    assert fid.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((nvae_run / "results.json").read_text())
    assert "test_bpd" in results and results["fid"] == printed["fid"] > 0 and results["kid_std"] >= 0
    assert results["fid_settings"]["reference"] == "hvae-shapes-16x16-8bit-train96" == printed["reference"]
    assert results["fid_settings"]["samples"] == 48 and results["fid_settings"]["readjust_bn"] == 3
    cached = sorted(p.name for p in cache.iterdir())
    assert "hvae-shapes-16x16-8bit-train96-hvae-test-tiny-stat-fid-16.pt" in cached
    model, config, _ = load_model(ckpt)
    reference = torch.utils.data.Subset(load_data(config).train, range(96))
    assert printed["fid"] == pytest.approx(by_hand(model, reference, 48, 16, 0.7, 3, 0), rel=1e-4)

    def no_reading(self, i):
        raise AssertionError("the reference images were read again instead of the cache")

    monkeypatch.setattr(ReferenceImages, "__getitem__", no_reading)
    assert fid.main(argv + ["--no-record"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == printed["fid"]  # same seed, cached reference


def test_a_model_whose_samples_are_the_reference_has_fid_zero():
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = torch.round(images * 255) / 255
    reference = [(x, 0) for x in images]

    class Replay(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.at = nn.Parameter(torch.zeros(1)), 0

        def sample(self, n, temperature):
            out = images[self.at:self.at + n]
            self.at += n
            return out

    result = fid_kid(Replay(), reference, "replay", num_samples=64, readjust_bn=0, batch_size=10,
                     feature_extractor="hvae-test-tiny", kid=False, verbose=False)
    assert result["fid"] == pytest.approx(0, abs=1e-6) and "kid" not in result


@pytest.mark.slow
def test_without_inception_weights_and_network_one_sentence_names_the_file(nvae_run, tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert fid.main([str(nvae_run / "checkpoint.pt"), "--n", "8", "--no-record"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and str(tmp_path / "hub" / "checkpoints") in err
    assert "--inception-weights PATH" in err and "URLError" in err
    assert fid.main([str(nvae_run / "checkpoint.pt"), "--inception-weights", str(tmp_path / "none.pth")]) == 2
    assert "No Inception weights at" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_inputs_are_one_sentence(nvae_run, tmp_path, capsys):
    def fails(*argv, code=2):
        try:
            got = fid.main([str(a) for a in argv])
        except SystemExit as stop:
            got = stop.code
        err = capsys.readouterr().err.strip()
        assert got == code and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        return err

    ckpt = nvae_run / "checkpoint.pt"
    assert "No checkpoint at" in fails(tmp_path / "missing.pt")
    assert "--temperature: must be > 0" in fails(ckpt, "--temperature", "0")
    assert "--n: must be >= 2" in fails(ckpt, "--n", "1")
    assert "Unknown feature extractor 'nope'; torch-fidelity has inception-v3-compat" in fails(
        ckpt, "--feature-extractor", "nope", "--no-record")
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    (broken / "results.json").write_text("{half")
    err = fails(broken / "checkpoint.pt", "--n", "8", "--readjust-bn", "0", "--reference-limit", "8",
                "--feature-extractor", "hvae-test-tiny", "--cache-dir", tmp_path / "cache", "--quiet")
    assert "could not be read as JSON" in err and (broken / "results.json").read_text() == "{half"
