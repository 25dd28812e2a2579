"""``python -m hvae_lib.latents``: every verb on a checkpoint of every family trained by the engine and on an
imported VDVAE, and every bad input as one sentence without a traceback."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvae_lib.config import override
from hvae_lib.import_vdvae import main as import_main
from hvae_lib import fid
from hvae_lib.latents import VERBS, build_parser, main
from hvae_lib.layers.bn_readjust import cached_temperatures, readjusted_bn
from hvae_lib.models.vdvae import VDVAE
from hvae_lib.models.presets import get_preset
from hvae_lib.training.engine import Trainer
from test_import_vdvae import TINY, official_layout, tiny_model
from test_latents import make

FAMILIES = ("vae", "lvae", "nvae", "vdvae")
QUICK = {"max_steps": 2, "quiet": True, "eval_every": 0, "checkpoint_every": 0, "sample_every": 0, "test_limit": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of each family's tiny preset (16x16 shapes), written by the engine after 2 steps."""
    runs = {}
    for family in FAMILIES:
        out = tmp_path_factory.mktemp(family)
        Trainer(override(get_preset(f"{family}_tiny"), QUICK), out, resume=False).fit()
        runs[family] = out / "checkpoint.pt"
    return runs


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """openai/vdvae's layout of a small CIFAR-10 VDVAE, imported; and two 32x32 colour PNGs to feed it."""
    folder = tmp_path_factory.mktemp("imported")
    torch.save(official_layout(tiny_model()), folder / "cifar10-model-ema.th")
    assert import_main([str(folder / "cifar10-model-ema.th"), "--preset", "vdvae_cifar10", *TINY,
                        "--out", str(folder / "run")]) == 0
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        files.append(str(folder / f"{i}.png"))
    return folder / "run" / "checkpoint.pt", files


def run(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def fails(capsys, *argv, code=2) -> str:
    try:
        got = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's errors (hvae_lib's ArgumentParser: one line, status 2)
        got = stop.code
    err = capsys.readouterr().err.strip()
    assert got == code and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def grid_size(rows, cols, side=16):
    """(width, height) of a torchvision grid: 2 pixels of padding around every image."""
    return cols * (side + 2) + 2, rows * (side + 2) + 2


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_verb_on_a_checkpoint_the_engine_trained(trained, tmp_path, capsys, family):
    ckpt = trained[family]
    common = ["--temperature", "0.8", "--readjust-bn", "2", "--device", "cpu"]
    out = run(capsys, "encode", ckpt, "--n", "4", "--out", tmp_path / "z.pt", *common)
    state = torch.load(tmp_path / "z.pt", weights_only=True)
    assert state["format"] == "hvae_lib.latents/1" and state["images"].shape == (4, 3, 16, 16)
    assert [z.shape[0] for z in state["latents"]] == [4] * len(state["latents"]) and "latents of 4 images" in out
    run(capsys, "decode", ckpt, tmp_path / "z.pt", "--groups", "1", "--draws", "2", "--out", tmp_path / "d.png", *common)
    assert Image.open(tmp_path / "d.png").size == grid_size(2, 4)
    run(capsys, "reconstruct", ckpt, "--index", "3", "5", "--draws", "2", "--out", tmp_path / "r.png",
        "--save-latents", tmp_path / "r.pt", *common)
    assert Image.open(tmp_path / "r.png").size == grid_size(3, 2)  # the images, then two rows of decodes
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    assert torch.equal(saved["images"][0], state["images"][3])  # test image 3, which encode saw as its fourth
    assert [tuple(z.shape[1:]) for z in saved["latents"]] == [tuple(z.shape[1:]) for z in state["latents"]]
    assert saved["latents"][0].shape[0] == 2
    run(capsys, "interpolate", ckpt, "--steps", "5", "--rest", "prior", "--method", "lerp", "--out",
        tmp_path / "i.png", *common)
    assert Image.open(tmp_path / "i.png").size == grid_size(1, 7)  # image a, five steps, image b
    out = run(capsys, "levels", ckpt, "--n", "2", "--draws", "3", "--out", tmp_path / "l.png", *common)
    levels = {"vae": 1, "lvae": 3, "nvae": 2, "vdvae": 4}[family]  # 1: one group; else the resolutions
    assert out.count("posterior") == levels and (tmp_path / "l.png").stat().st_size > 0


@pytest.mark.slow
def test_every_verb_on_an_imported_vdvae_reads_image_files(imported, tmp_path, capsys):
    ckpt, files = imported
    for verb in VERBS:
        if verb == "decode":
            run(capsys, "encode", ckpt, *files, "--out", tmp_path / "z.pt")
            run(capsys, "decode", ckpt, tmp_path / "z.pt", "--out", tmp_path / "decode.png", "--temperature", "0.5")
        elif verb != "encode":
            run(capsys, verb, ckpt, *files, "--out", tmp_path / f"{verb}.png", "--temperature", "0.5")
    assert Image.open(tmp_path / "reconstruct.png").size == grid_size(2, 2, 32)
    assert Image.open(tmp_path / "interpolate.png").size == grid_size(1, 10, 32)
    # decode(encode(x)) is the reconstruction: the same grid rows
    decoded = np.asarray(Image.open(tmp_path / "decode.png"))
    reconstructed = np.asarray(Image.open(tmp_path / "reconstruct.png"))
    assert np.array_equal(decoded[2:], reconstructed[2 + 34:])
    out = run(capsys, "levels", ckpt, *files, "--levels", "1,8", "--temperature", "1,0.9,0.8,0.7",
              "--out", tmp_path / "levels.png")
    assert "prior everywhere, posterior to 1×1, posterior to 8×8" in out


@pytest.mark.slow
def test_readjusted_batchnorm_changes_nvae_and_nothing_without_batchnorm(trained, tmp_path, capsys):
    def picture(family, *extra):
        path = tmp_path / f"{family}{len(extra)}.png"
        run(capsys, "reconstruct", trained[family], "--groups", "0", "--temperature", "0.7", "--out", path, *extra)
        return np.asarray(Image.open(path))

    assert not np.array_equal(picture("nvae"), picture("nvae", "--readjust-bn", "3"))
    assert np.array_equal(picture("vdvae"), picture("vdvae", "--readjust-bn", "3"))


@pytest.mark.slow
def test_bad_inputs_are_one_sentence(trained, imported, tmp_path, capsys):
    ckpt = trained["vdvae"]
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    assert "is 20x20 pixels but this model takes 16x16 images" in fails(capsys, "reconstruct", ckpt, tmp_path / "small.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "grey.png")
    assert "grey image but this model takes colour" in fails(capsys, "encode", imported[0], tmp_path / "grey.png")
    assert "No image file at" in fails(capsys, "reconstruct", ckpt, tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert "could not be read as an image" in fails(capsys, "reconstruct", ckpt, tmp_path / "junk.png")
    assert "No checkpoint at" in fails(capsys, "levels", tmp_path / "missing.pt")
    assert "No latents file at" in fails(capsys, "decode", ckpt, tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    assert "not a latents file" in fails(capsys, "decode", ckpt, tmp_path / "other.pt")
    run(capsys, "encode", trained["nvae"], "--n", "2", "--out", tmp_path / "nvae.pt")
    assert "do not fit this VDVAE" in fails(capsys, "decode", ckpt, tmp_path / "nvae.pt")
    assert "Level 2 is not one of this model's levels by resolution: 1, 4, 8, 16" in fails(
        capsys, "levels", ckpt, "--levels", "1,2")
    assert "between 0 and 7" in fails(capsys, "reconstruct", ckpt, "--groups", "8")
    assert "between 0 and 7" in fails(capsys, "interpolate", ckpt, "--groups", "9")
    for bad in ("0", "-1", "1,0", "nan"):
        assert "--temperature: must be" in fails(capsys, "levels", ckpt, "--temperature", bad)
    assert "needs 4 values" in fails(capsys, "levels", ckpt, "--temperature", "1,0.5")
    assert "interpolate takes two images, got 3" in fails(capsys, "interpolate", ckpt, "--index", "0", "1", "2")
    assert "outside the test set" in fails(capsys, "reconstruct", ckpt, "--index", "999")
    assert "image extension" in fails(capsys, "reconstruct", ckpt, "--out", tmp_path / "r.txt")
    assert "must end in .pt" in fails(capsys, "encode", ckpt, "--out", tmp_path / "z.npy")
    assert "invalid choice" in fails(capsys, "transmogrify", ckpt)
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert fails(capsys, "reconstruct", ckpt, "--out", blocked / "r.png", code=1)


def test_readjustment_takes_a_temperature_per_group_and_skips_models_without_batchnorm():
    nvae = make("nvae").train()
    calls = []
    original = nvae.sample
    nvae.sample = lambda n, t=1.0: calls.append(t) or original(n, t)
    with readjusted_bn(nvae, [0.9, 0.5], num_passes=2, batch_size=4):
        assert not nvae.training
    assert calls == [[0.9, 0.5]] * 2 and cached_temperatures(nvae) == [(0.9, 0.5)]
    with readjusted_bn(nvae, 0.7, num_passes=2, batch_size=4):
        pass
    assert cached_temperatures(nvae) == [0.7, (0.9, 0.5)] and nvae.training
    vdvae = make("vdvae").train()
    assert isinstance(vdvae, VDVAE)
    vdvae.sample = lambda *args: pytest.fail("a model without BatchNorm was sampled to re-estimate nothing")
    with readjusted_bn(vdvae, 0.7, num_passes=5):
        assert not vdvae.training
    assert vdvae.training


def test_the_readme_shows_every_verb_and_fid_with_flags_that_exist():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = re.findall(r"^python -m hvae_lib\.(latents|fid) ([^\n]*)$", readme, flags=re.M)
    assert {line.split()[0] for module, line in lines if module == "latents"} == set(VERBS)
    assert any(module == "fid" for module, _ in lines)
    for module, line in lines:
        parser = build_parser() if module == "latents" else fid.build_parser()
        parser.parse_args(shlex.split(line))  # an unknown flag or a bad value exits with one line
