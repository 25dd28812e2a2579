"""The training engine: exact resume, kill -9, skipping, clipping, EMA, schedules, precision, checkpointing."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from state_compare import state_equal

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset, list_presets
from hvae_lib.probability.objectives import elbo
from hvae_lib.training.checkpoint import load_checkpoint
from hvae_lib.training.engine import Trainer, TrainingError, build_data_and_model
from hvae_lib.training.optim import lr_factor, make_optimizer, should_skip
from hvae_lib.training.run_log import GlobalBatches

ROOT = Path(__file__).resolve().parent.parent
METRIC_KEYS = {"step", "loss", "recon", "kl", "kl_per_group", "grad_norm", "skipped", "lr", "kl_weight", "images_per_s"}


def tiny(*assignments):
    return override(get_preset("vae_tiny"), ["quiet=true", "eval_every=0", *assignments])


def metrics(path: Path, split="train") -> list[dict]:
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("split") == split]


# ----------------------------------------------------------------------------- resume


def test_resume_is_exact_bit_for_bit(tmp_path):
    """N steps straight equal N/2 steps, stop, rerun to N: weights, EMA and optimiser state, bit for bit.

    The first half runs with schedule_steps=N so its cosine follows the full run's. Evaluation and
    sample grids happen in between (at different steps in the two runs): they fork the RNG, so they
    must not shift the z noise of later training steps. KL warm-up spans the stop.
    """
    common = ["ema_rate=0.9", "kl_warmup_steps=12", "sample_every=4", "eval_every=5", "log_every=3", "checkpoint_every=7"]
    straight = Trainer(tiny("max_steps=20", *common), tmp_path / "straight", resume=False)
    straight.fit()
    Trainer(tiny("max_steps=10", "schedule_steps=20", *common), tmp_path / "halves").fit()
    resumed = Trainer(tiny("max_steps=20", *common), tmp_path / "halves")
    assert resumed.step == 10
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(tmp_path / "halves" / "checkpoint.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "step"):
        assert state_equal(a[key], b[key]), f"{key} differs after resuming"
    assert not state_equal(a["model"], a["ema"])
    steps = [r["step"] for r in metrics(tmp_path / "halves")]
    assert steps == sorted(set(steps)) and steps[-1] == 20  # each step logged once
    assert math.isclose(a["scheduler"]["_last_lr"][0], b["scheduler"]["_last_lr"][0])


def test_evaluation_and_samples_leave_the_training_rng_alone(tmp_path):
    trainer = Trainer(tiny("max_steps=2", "sample_every=1"), tmp_path, resume=False)
    before = torch.get_rng_state()
    trainer.evaluate(max_batches=1)
    trainer.write_samples()
    assert torch.equal(before, torch.get_rng_state()) and (tmp_path / "samples.png").exists()


def test_batches_are_a_function_of_the_step_and_ranks_split_them():
    data = list(range(100))
    full = GlobalBatches([(torch.tensor(float(i)),) for i in data], batch_size=10, seed=3)
    epoch0 = sum((full.indices(s) for s in range(10)), [])
    assert sorted(epoch0) == data, "an epoch visits every image once"
    assert full.indices(10) != full.indices(0), "each epoch has its own order"
    late = GlobalBatches(full.dataset, 10, seed=3)
    assert late.indices(13) == full.indices(13), "a fresh loader (a resumed run) replays the same batch"
    shards = [GlobalBatches(full.dataset, 10, 3, rank=r, world=2).indices(13) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(full.indices(13)) and len(shards[0]) == 5


# ----------------------------------------------------------------------------- kill -9


def _train_cmd(out: Path, *assignments):
    sets = sum((["--set", a] for a in assignments), [])
    return [sys.executable, "-m", "hvae_lib.train", "--preset", "vae_tiny", "--out", str(out), *sets]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_to_the_same_weights(tmp_path):
    """SIGKILL the CLI at seeded random moments of a run that checkpoints every step (so kills land in
    training steps, evaluations and checkpoint writes); each time the checkpoint on disk loads, and
    the run finally resumes to completion with the weights of an uninterrupted run, bit for bit."""
    sets = ("max_steps=40", "checkpoint_every=1", "quiet=true", "eval_every=15", "eval_batches=1", "ema_rate=0.9")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, rng, killed_at = tmp_path / "run", random.Random(7), []
    for _ in range(3):
        start = time.time()
        proc = subprocess.Popen(_train_cmd(out, *sets), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ckpt = out / "checkpoint.pt"
        while proc.poll() is None and not (ckpt.exists() and ckpt.stat().st_mtime > start):
            time.sleep(0.02)  # wait until this process is training, then let it run a little
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.stderr.read().decode()[-500:]}"
        proc.stderr.close()
        killed_at.append(load_checkpoint(ckpt)["step"])
        assert len(list(out.glob(".checkpoint.pt.*.tmp"))) <= 1
    assert killed_at == sorted(killed_at) and killed_at[-1] < 40
    done = subprocess.run(_train_cmd(out, *sets), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.glob(".checkpoint.pt.*.tmp")), "the next save removes a killed save's temp file"
    straight = Trainer(tiny(*sets), tmp_path / "straight", resume=False)
    straight.fit()
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["step"] == 40 and state_equal(final["model"], straight.model.state_dict())
    assert state_equal(final["ema"], straight.ema.state_dict())
    steps = [r["step"] for r in metrics(out)]
    assert steps == sorted(set(steps)), "records written after the last checkpoint of a killed run are dropped"


# ----------------------------------------------------------------------------- skipping and clipping


class PoisonedAtStep3(Trainer):
    """Makes the loss NaN at step 3 and records the weights around every step."""

    def loss(self, x, step):
        loss, terms, beta = super().loss(x, step)
        return (loss * float("nan") if step == 3 else loss), terms, beta

    def train_step(self):
        before = [p.detach().clone() for p in self.model.parameters()]
        ema_before = [p.detach().clone() for p in self.ema.parameters()]
        record = super().train_step()
        self.trace.append((record, before, [p.detach().clone() for p in self.model.parameters()], ema_before,
                           [p.detach().clone() for p in self.ema.parameters()]))
        return record


def test_a_non_finite_loss_is_skipped_counted_and_changes_nothing(tmp_path, capsys):
    trainer = PoisonedAtStep3(tiny("max_steps=6", "log_every=1", "ema_rate=0.9", "quiet=false"), tmp_path, resume=False)
    trainer.trace = []
    trainer.fit()
    for step, (record, before, after, ema_before, ema_after) in enumerate(trainer.trace):
        changed = any(not torch.equal(a, b) for a, b in zip(before, after))
        ema_changed = any(not torch.equal(a, b) for a, b in zip(ema_before, ema_after))
        assert record["skipped"] == (step == 3) and changed == (step != 3) and ema_changed == (step != 3)
    assert [r["skipped"] for r in metrics(tmp_path)] == [0, 0, 0, 1, 0, 0]
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["total_skips"] == 1 and saved["consecutive_skips"] == 0
    bar = capsys.readouterr().err
    assert "skipped=1" in bar and "bpd=" in bar and "img_s=" in bar and "loss=" in bar


def test_the_skip_rule_is_openai_vdvae_s_a_norm_at_the_threshold_is_skipped():
    """openai/vdvae updates only while grad_norm < skip_threshold: equality skips; 0 turns the size test off."""
    t = torch.tensor
    cases = {(2.0, 399.99, 400.0): False, (2.0, 400.0, 400.0): True, (2.0, 400.01, 400.0): True,
             (2.0, 1e9, 0.0): False, (float("nan"), 1.0, 400.0): True, (2.0, float("inf"), 0.0): True,
             (float("-inf"), 1.0, 0.0): True}
    for (loss, norm, threshold), skip in cases.items():
        assert bool(should_skip(t(loss), t(norm), threshold)) is skip, (loss, norm, threshold)


def test_a_norm_equal_to_the_threshold_skips_the_update_in_the_engine(tmp_path):
    probe = Trainer(tiny("max_steps=1"), tmp_path / "probe", resume=False)
    norm = probe.train_step()["grad_norm"]  # the first step's norm, deterministic from the seed
    at = Trainer(tiny("max_steps=1", f"skip_threshold={norm!r}"), tmp_path / "at", resume=False)
    before = [p.detach().clone() for p in at.model.parameters()]
    record = at.train_step()
    assert record["grad_norm"] == norm and record["skipped"] == 1 and at.total_skips == 1
    assert all(torch.equal(a, b) for a, b in zip(before, at.model.parameters()))


def test_quiet_mode_draws_no_bar(tmp_path, capsys):
    Trainer(tiny("max_steps=2"), tmp_path, resume=False).fit()
    assert capsys.readouterr().err == ""


def test_every_update_skipped_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path):
    Trainer(tiny("max_steps=10", "checkpoint_every=5"), tmp_path, resume=False).fit()
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    trainer = Trainer(tiny("max_steps=30", "checkpoint_every=5", "skip_threshold=1e-9", "max_consecutive_skips=4"), tmp_path)
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    message = str(err.value)
    assert trainer.step == 14, "the run stops at the K-th skipped update in a row"
    assert "skip_threshold" in message and "\n" not in message and "last good weights" in message
    on_disk = load_checkpoint(tmp_path / "checkpoint.pt")
    assert on_disk["step"] == 10 and state_equal(on_disk["model"], good["model"])
    assert state_equal(trainer.model.state_dict(), good["model"]), "skipped updates changed the weights"
    # From the first step on: the message says no checkpoint exists yet.
    with pytest.raises(TrainingError, match="no checkpoint was written"):
        Trainer(tiny("skip_threshold=1e-9", "max_consecutive_skips=3"), tmp_path / "fresh", resume=False).fit()


def test_gradients_are_clipped_and_the_unclipped_norm_is_reported(tmp_path):
    trainer = Trainer(tiny("grad_clip=0.001"), tmp_path, resume=False)
    record = trainer.train_step()
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert record["grad_norm"] > 1 and clipped == pytest.approx(0.001, rel=1e-3) and not record["skipped"]


# ----------------------------------------------------------------------------- objective, EMA, schedules, optimisers


def test_with_defaults_the_loss_is_the_negative_elbo(tmp_path):
    trainer = Trainer(tiny(), tmp_path, resume=False)
    x = trainer.batches.get(0)
    torch.manual_seed(5)
    loss, terms, beta = trainer.loss(x, 0)
    torch.manual_seed(5)
    assert beta == 1.0 and torch.allclose(loss, elbo(trainer.model(x), trainer.info.num_dims).loss)
    warm = Trainer(tiny("kl_warmup_steps=10", "kl_warmup_start=0"), tmp_path / "w", resume=False)
    torch.manual_seed(5)
    loss, terms, beta = warm.loss(x, 4)
    assert beta == pytest.approx(0.4) and torch.allclose(loss, terms.recon + 0.4 * terms.kl)


def test_a_loss_fn_replaces_the_training_loss(tmp_path):
    """Chapters 1 and 2 train with the student's loss: loss_fn(out, beta) is what is minimised."""
    seen = []

    def negative_elbo(out, beta):
        seen.append(beta)
        return (beta * out.kl_per_group.sum(1) - out.log_px_z).mean()

    default = Trainer(tiny("kl_warmup_steps=10", "kl_warmup_start=0"), tmp_path / "a", resume=False)
    custom = Trainer(tiny("kl_warmup_steps=10", "kl_warmup_start=0"), tmp_path / "b", resume=False, loss_fn=negative_elbo)
    x = default.batches.get(0)
    for trainer in (default, custom):
        torch.manual_seed(5)
        trainer.result = trainer.loss(x, 4)
    assert seen == [pytest.approx(0.4)]
    assert torch.allclose(custom.result[0], default.result[0]) and custom.result[2] == default.result[2]

    frozen = Trainer(tiny(), tmp_path / "c", resume=False, loss_fn=lambda out, beta: 0.0 * out.log_px_z.mean())
    before = [p.detach().clone() for p in frozen.model.parameters()]
    record = frozen.train_step()
    assert record["loss"] == 0.0 and record["bpd"] > 0  # the exact ELBO is still reported
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.model.parameters())), "a zero loss moved the weights"

    per_image = Trainer(tiny(), tmp_path / "d", resume=False, loss_fn=lambda out, beta: -out.log_px_z)
    with pytest.raises(TrainingError, match=r"loss_fn must return a scalar tensor .* got shape \(32,\)"):
        per_image.train_step()
    from hvae_lib.config.ranges import ConfigError

    with pytest.raises(ConfigError, match="free_bits and kl_balancing would be ignored"):
        Trainer(tiny("free_bits=0.5"), tmp_path / "e", resume=False, loss_fn=negative_elbo)


def test_ema_follows_the_weights_and_serves_evaluation(tmp_path):
    trainer = Trainer(tiny("ema_rate=0.75"), tmp_path, resume=False)
    ema_before = [p.clone() for p in trainer.ema.parameters()]
    trainer.train_step()
    for e0, e1, p in zip(ema_before, trainer.ema.parameters(), trainer.model.parameters()):
        assert torch.allclose(e1, 0.75 * e0 + 0.25 * p)
    assert trainer.eval_model is trainer.ema and not any(p.requires_grad for p in trainer.ema.parameters())
    plain = Trainer(tiny(), tmp_path / "no_ema", resume=False)
    assert plain.ema is None and plain.eval_model is plain.model


def test_evaluate_raw_scores_the_raw_weights_when_an_ema_is_kept(tmp_path):
    """evaluate(raw=True) is what a model without an EMA reports: the comparisons across models use it."""
    trainer = Trainer(tiny("ema_rate=0.5", "test_limit=64"), tmp_path, resume=False)
    for _ in range(3):
        trainer.train_step()
    ema, raw = trainer.evaluate(), trainer.evaluate(raw=True)
    assert ema["test_images"] == raw["test_images"] == 64 and ema["test_bpd"] != raw["test_bpd"]
    twin = Trainer(tiny("test_limit=64"), tmp_path / "twin", resume=False)  # no EMA: evaluates its raw weights
    twin.model.load_state_dict(trainer.model.state_dict())
    assert twin.evaluate() == raw and trainer.model.training  # and training mode is restored


def test_lr_schedule_warmup_cosine_and_constant():
    optim = SimpleNamespace(warmup_steps=10, schedule="cosine", schedule_steps=0, max_steps=110, lr=1e-2, lr_min=1e-4)
    assert [lr_factor(s, optim) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, optim) == pytest.approx(1.0)
    assert lr_factor(60, optim) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way down the cosine
    assert lr_factor(110, optim) == pytest.approx(0.01) and lr_factor(500, optim) == pytest.approx(0.01)
    optim.schedule_steps = 210  # a longer horizon than this run: the first half of a longer cosine
    assert lr_factor(110, optim) == pytest.approx(0.01 + 0.99 * 0.5)
    optim.schedule = "constant"
    assert lr_factor(9, optim) == pytest.approx(1.0) and lr_factor(1000, optim) == 1.0


@pytest.mark.parametrize("name,cls", [("adamax", torch.optim.Adamax), ("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)])
def test_optimisers(name, cls, tmp_path):
    config = tiny(f"optimizer={name}", "weight_decay=0.01", "betas=0.9,0.95")
    opt = make_optimizer([torch.nn.Parameter(torch.ones(2))], config.optim)
    assert type(opt) is cls and opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["weight_decay"] == 0.01
    trainer = Trainer(config, tmp_path, resume=False)
    before = [p.clone() for p in trainer.model.parameters()]
    trainer.train_step()
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


# ----------------------------------------------------------------------------- outputs


def test_a_run_writes_config_checkpoint_metrics_events_and_samples(tmp_path):
    result = Trainer(tiny("max_steps=4", "log_every=2", "sample_every=2"), tmp_path, resume=False).fit()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config", "checkpoint.pt", "metrics.jsonl", "samples.png", "results.json", "tensorboard"} <= names
    assert "optim.max_steps = 4" in (tmp_path / "config").read_text()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    train = metrics(tmp_path)
    assert [r["step"] for r in train] == [2, 4] and all(METRIC_KEYS <= set(r) for r in train)
    assert len(train[0]["kl_per_group"]) == 1 and train[0]["images_per_s"] > 0 and train[0]["kl_weight"] == 1.0
    assert result["step"] == 4 and result["test_bpd"] > 0 and result["test_images"] == 128


# ----------------------------------------------------------------------------- precision and checkpointing


def test_fp16_runs_with_a_grad_scaler_and_bf16_keeps_the_maths_in_fp32(tmp_path):
    fp16 = Trainer(tiny("max_steps=10", "precision=fp16"), tmp_path / "fp16", resume=False)
    assert fp16.scaler.is_enabled()
    fp16.fit()
    assert load_checkpoint(tmp_path / "fp16" / "checkpoint.pt")["scaler"]["scale"] < 2.0**16  # it has adapted
    bf16 = Trainer(tiny("max_steps=3", "precision=bf16"), tmp_path / "bf16", resume=False)
    assert not bf16.scaler.is_enabled()
    conv_dtypes = []
    hook = bf16.model.encoder[0][0].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    with bf16.autocast():
        out = bf16.model(bf16.batches.get(0))
    hook.remove()
    assert conv_dtypes == [torch.bfloat16], "autocast is not on"
    assert out.kl_per_group.dtype == out.log_px_z.dtype == out.log_q_minus_log_p.dtype == torch.float32
    assert math.isfinite(bf16.fit()["test_bpd"])


def test_grad_checkpointing_gives_the_same_weights(tmp_path):
    runs = []
    for flag in ("false", "true"):  # one after the other: a Trainer seeds the global RNG when built
        runs.append(Trainer(tiny("max_steps=4", f"grad_checkpointing={flag}"), tmp_path / flag, resume=False))
        runs[-1].fit()
    assert runs[1].model.grad_checkpointing and not runs[0].model.grad_checkpointing
    assert state_equal(runs[0].model.state_dict(), runs[1].model.state_dict())


def saved_bytes(fn):
    """(fn(), bytes the autograd graph saves for backward), each storage counted once."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage  # held, so no later tensor reuses the address
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(s.nbytes() for s in storages.values())


@pytest.mark.parametrize("name", [name for name, _ in list_presets() if name.endswith("_tiny")])
def test_every_tiny_preset_honours_grad_checkpointing(name):
    """Each model family's smoke preset: checkpointing saves less for backward and changes no gradient."""
    data, model = build_data_and_model(override(get_preset(name), ["batch_size=4"]))
    x = torch.stack([data.train[i][0] for i in range(4)])  # (B, C, H, W)
    model.train()
    grads, sizes = [], []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        torch.manual_seed(0)
        loss, size = saved_bytes(lambda: elbo(model(x), data.info.num_dims).loss)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        sizes.append(size)
    assert sizes[1] < sizes[0], f"{name}: grad_checkpointing saved {sizes[1]} bytes vs {sizes[0]} without"
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))


# ----------------------------------------------------------------------------- speed switches


def test_channels_last_trains_like_the_default_layout(tmp_path):
    runs = {}
    for flag in ("false", "true"):  # one after the other: a Trainer seeds the global RNG when built
        runs[flag] = Trainer(tiny("max_steps=3", f"channels_last={flag}"), tmp_path / flag, resume=False)
        runs[flag].fit()
    conv = runs["true"].model.encoder[0][0].weight  # (C_out, C_in, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, a), b in zip(runs["false"].model.state_dict().items(), runs["true"].model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{name} differs in the NHWC layout"
    saved = load_checkpoint(tmp_path / "true" / "checkpoint.pt")
    assert saved["model"].keys() == runs["false"].model.state_dict().keys()


@pytest.mark.slow
def test_compile_trains_like_eager_and_saves_the_plain_weights(tmp_path):
    """run.compile: the training forward goes through torch.compile; the losses and weights match eager
    ones up to float reordering, and the checkpoint holds the model's own keys (no '_orig_mod.')."""
    runs, losses = {}, {}
    for flag in ("false", "true"):
        runs[flag] = Trainer(tiny("max_steps=2", f"compile={flag}"), tmp_path / flag, resume=False)
        losses[flag] = [runs[flag].train_step()["loss"] for _ in range(2)]
    assert runs["true"].forward is not runs["true"].ddp and runs["false"].forward is runs["false"].ddp
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    # Adamax moves each weight by at most lr per step (exactly lr * sign(g) on the first), so a
    # near-zero gradient whose sign differs after float reordering may move a weight by 2 lr.
    bound = 2 * sum(lr_factor(s, runs["true"].config.optim) * 2e-3 for s in range(2))
    for a, b in zip(runs["false"].model.parameters(), runs["true"].model.parameters()):
        assert (a - b).abs().max() <= bound + 1e-7
    runs["true"].save()
    assert load_checkpoint(tmp_path / "true" / "checkpoint.pt")["model"].keys() == runs["false"].model.state_dict().keys()
