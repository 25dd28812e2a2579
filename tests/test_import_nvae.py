"""Importing NVlabs' released NVAE checkpoints (issue 24), without NVlabs' code: a checkpoint in the
released layout is written from a model of ours (NVlabs' key names, an ``argparse.Namespace`` as
``args``), imported, evaluated and sampled; bad inputs give one sentence each. Spot checks of the key
names were read off NVlabs' ``model.py`` by hand; ``benchmarks/nvae_import_check.py`` compares the
whole mapping with NVlabs' model code itself (its figures are in benchmarks/RESULTS.md)."""
import argparse
import datetime
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hvae_lib import evaluate, sample
from hvae_lib.config import override
from hvae_lib.data.contract import Datasets, ImageDataset, dataset_info
from hvae_lib.import_nvae import main
from hvae_lib.models.nvae import NVAE
from hvae_lib.models.nvae_official import find_preset, official_key_map, official_to_ours, ours_to_official
from hvae_lib.models.presets import get_preset
from hvae_lib.training import engine
from hvae_lib.training.checkpoint import load_model

FLAGS = dict(dataset="cifar10", num_latent_scales=2, num_groups_per_scale=2, ada_groups=True, min_groups_per_scale=1,
             num_latent_per_group=4, num_channels_enc=8, num_channels_dec=8, num_cell_per_cond_enc=1,
             num_cell_per_cond_dec=2, num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1,
             num_postprocess_cells=2, num_mixture_dec=3, num_nf=1, use_se=True, res_dist=True,
             weight_decay_norm=1e-2, weight_decay_norm_init=10.0, weight_decay_norm_anneal=False,
             arch_instance="res_mbconv", num_x_bits=8, batch_size=32, learning_rate=1e-2, epochs=10)
OURS = dict(num_latent_scales=2, num_groups_per_scale=2, ada_groups=True, num_latent_per_group=4, num_channels_enc=8,
            num_channels_dec=8, num_cell_per_cond_enc=1, num_cell_per_cond_dec=2, num_preprocess_blocks=1,
            num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2, num_mix=3, num_flows=1)


def perturbed_model(seed=0, **changes):
    torch.manual_seed(seed)
    model = NVAE((3, 32, 32), 8, "logistic_mixture", official_numerics=True, **{**OURS, **changes})
    with torch.no_grad():  # off the initial values (and BN statistics off 0 and 1): no mapping error hides
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.startswith("spectral."):
                t.add_(0.05 * torch.randn_like(t)) if not name.endswith("running_var") else t.mul_(1.5)
    return model


def released_file(path: Path, model, **flags) -> Path:
    """What NVlabs' train.py saves: the state_dict under its names, and the training command's namespace."""
    args = argparse.Namespace(**{**FLAGS, **flags})
    torch.save({"epoch": 400, "state_dict": ours_to_official(model), "optimizer": {"state": {}, "param_groups": []},
                "global_step": 1000, "args": args, "arch_instance": {"normal_enc": ["res_bnswish", "res_bnswish"]},
                "scheduler": {"last_epoch": 3}, "grad_scalar": {"scale": 1024.0}}, path)
    return path


def write_cifar(root: Path, n_test=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"labels": [0] * n, b"data": data}))


def test_nvlabs_key_names_read_off_its_model_code():
    keys = set(official_key_map(NVAE((3, 32, 32), 8, "logistic_mixture", **OURS)).values())
    for name in ("prior_ftr0", "stem.log_weight_norm", "pre_process.1.skip.conv_4.weight",  # the down cell's reduce
                 "pre_process.0._ops.1.bn_act.running_var", "pre_process.0.se.se.2.bias",
                 "enc_tower.1.conv.weight",  # scale 0: cell, combiner, cell, combiner, then the down cell
                 "enc_tower.4._ops.0.conv_0.log_weight_norm", "enc0.1.bias", "enc_sampler.2.weight",
                 "dec_sampler.0.1.weight", "nf_cells.2.cell2.mu.conv_0.log_weight_norm",
                 "nf_cells.0.cell1.conv.convz.2.weight",
                 "dec_tower.0.conv.weight",  # the top group: no cells, its combiner only
                 "dec_tower.1._ops.0.conv.1.bn.weight",  # the up cell: nearest upsampling, then the BN
                 "dec_tower.1.skip.1.log_weight_norm", "dec_tower.2._ops.0.conv.0.bn.running_mean",
                 "dec_tower.2._ops.0.conv.1.conv.1.weight", "dec_tower.2._ops.0.conv.3.weight",
                 "dec_tower.4.conv.bias", "post_process.0._ops.0.conv.5.bn.weight", "post_process.1.se.se.0.weight",
                 "image_conditional.1.weight"):
        assert name in keys, name
    assert len(keys) == len(set(official_key_map(NVAE((3, 32, 32), 8, "logistic_mixture", **OURS))))


def test_round_trip_and_both_batchnorm_spellings():
    model = perturbed_model()
    released = ours_to_official(model)
    assert torch.equal(released["dec_tower.2._ops.0.conv.1.conv.0.weight_normalized"],
                       released["dec_tower.2._ops.0.conv.1.conv.0.weight"])  # NVlabs' plain convs list it twice
    state = model.state_dict()
    back = official_to_ours(released, model)
    assert all(torch.equal(back[k], state[k]) for k in state)
    single_gpu = {k.replace(".bn.", "."): v for k, v in released.items()}  # nn.BatchNorm2d, no SyncBatchNorm wrapper
    back = official_to_ours(single_gpu, model)
    assert all(torch.equal(back[k], state[k]) for k in state)
    # The mixture's output channels: NVlabs' (per colour: M means, M log-scales, M coefficients) to ours.
    assert not torch.equal(released["image_conditional.1.weight"], state["head.conv.1.weight"])


def test_import_then_evaluate_and_sample(tmp_path, monkeypatch, capsys):
    model = perturbed_model()
    path = released_file(tmp_path / "checkpoint.pt", model)
    assert main([str(path), "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "as preset nvae_cifar10 (with the checkpoint's flags" in printed and "NVlabs' numerics" in printed
    assert "--set official_numerics=True" in printed and "--set num_channels_enc=8" in printed
    ours, config, info = load_model(tmp_path / "run" / "checkpoint.pt")
    assert config.model.official_numerics and config.data.name == "cifar10"
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    model.eval()
    torch.manual_seed(3)
    expected = model(x)
    torch.manual_seed(3)
    got = ours(x)
    assert torch.equal(got.kl_per_group, expected.kl_per_group) and torch.equal(got.log_px_z, expected.log_px_z)

    write_cifar(tmp_path / "data")
    monkeypatch.setenv("HVAE_DATA_ROOT", str(tmp_path / "data"))
    assert evaluate.main([str(tmp_path / "run" / "checkpoint.pt"), "--iw-samples", "3", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 4 and np.isfinite(result["importance_weighted"]["bpd"])
    assert "NVlabs" in result["grid"]
    out = tmp_path / "samples.png"
    assert sample.main([str(tmp_path / "run" / "checkpoint.pt"), "--n", "4", "--out", str(out),
                        "--temperature", "0.6", "--readjust-bn", "2"]) == 0
    assert out.stat().st_size > 0


def test_the_printed_train_command_fine_tunes_the_import(tmp_path, monkeypatch, capsys):
    model = perturbed_model()
    assert main([str(released_file(tmp_path / "checkpoint.pt", model)), "--out", str(tmp_path / "run")]) == 0
    command = capsys.readouterr().out.split("fine-tune with: ")[1].split()
    assert command[:5] == ["python", "-m", "hvae_lib.train", "--preset", "nvae_cifar10"]
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    info = dataset_info("cifar10")
    images = ImageDataset(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.zeros(16))
    monkeypatch.setattr(engine, "load_data", lambda config: Datasets(images, images, info))
    config = override(get_preset("nvae_cifar10"), sets + ["batch_size=8", "max_steps=1", "quiet=true", "precision=fp32"])
    trainer = engine.Trainer(config, tmp_path / "run", resume=True)  # resumes the imported checkpoint at step 0
    assert trainer.step == 0 and torch.equal(trainer.model.prior_ftr0, model.prior_ftr0)
    assert np.isfinite(trainer.train_step()["loss"])


def test_a_checkpoint_no_preset_fits_is_built_from_its_flags_and_the_mnist_one_from_the_preset(tmp_path):
    assert find_preset(ours_to_official(perturbed_model())) is None
    with torch.device("meta"):
        mnist = NVAE((1, 28, 28), 1, "bernoulli", num_latent_scales=2, num_groups_per_scale=10, ada_groups=True,
                     num_latent_per_group=20, num_channels_enc=32, num_channels_dec=32, num_cell_per_cond_enc=2,
                     num_cell_per_cond_dec=2, num_preprocess_blocks=2, num_preprocess_cells=3, num_postprocess_blocks=2,
                     num_postprocess_cells=3)
    state = {k: torch.empty(v.shape) for k, v in mnist.state_dict().items()}
    assert find_preset({k: v for k, v in _official_shapes(mnist, state).items()}) == "nvae_mnist"


def _official_shapes(model, state):
    return {theirs: state[ours] for ours, theirs in official_key_map(model).items()}


def test_bad_inputs_are_one_sentence_each(tmp_path, capsys):
    def error(path) -> str:
        assert main([str(path), "--out", str(tmp_path / "run")]) == 2
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0, message
        return message

    torch.save({"state_dict": {}, "args": datetime.date(2020, 7, 8)}, tmp_path / "foreign.pt")  # not allowed
    assert "holds a pickled" in error(tmp_path / "foreign.pt") and "nothing in it was run" in error(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 50)
    assert "could not be read as a PyTorch file" in error(tmp_path / "junk.pt")
    torch.save({"model": {}, "format": "hvae_lib.training.checkpoint/1"}, tmp_path / "ours.pt")
    assert "not an NVlabs NVAE checkpoint" in error(tmp_path / "ours.pt")
    other = released_file(tmp_path / "other.pt", perturbed_model(num_channels_enc=16, num_channels_dec=16))
    message = error(other)  # its args say 8 channels, its tensors hold 16
    assert "does not fit the nvae_cifar10 preset's model" in message and "has shape" in message
    lsun = released_file(tmp_path / "lsun.pt", perturbed_model(), dataset="lsun_church_64")
    assert "no loader for" in error(lsun)
    assert "there is no file" in error(tmp_path / "missing.pt")
