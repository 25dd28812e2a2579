"""hvae_lib.training.simple_loop: Chapter 1's plain loop computes what the engine computes."""
import torch

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training.checkpoint import load_model, save_atomic
from hvae_lib.training.engine import Trainer, build_data_and_model
from hvae_lib.training.optim import lr_factor, make_optimizer
from hvae_lib.training.run_log import GlobalBatches
from hvae_lib.training.simple_loop import engine_checkpoint, train_loop


def test_the_plain_loop_reaches_the_engines_weights(tmp_path):
    """From the same seed (initial weights, batches, z noise) the plain loop and Trainer take the same
    steps: warm-up and cosine schedule, KL warm-up, clipping that bites; the same losses, the same weights."""
    config = override(get_preset("vae_tiny"), {"max_steps": 8, "warmup_steps": 3, "kl_warmup_steps": 5,
                                               "grad_clip": 50.0, "quiet": True})
    engine = Trainer(config, tmp_path / "engine", resume=False)
    engine_records = [engine.train_step() for _ in range(config.optim.max_steps)]

    torch.manual_seed(config.run.seed)
    data, model = build_data_and_model(config)
    batches = GlobalBatches(data.train, config.optim.batch_size, config.run.seed)
    history = train_loop(model, make_optimizer(model.parameters(), config.optim), batches.get, config.optim)

    assert [r["loss"] for r in history] == [r["loss"] for r in engine_records]
    assert [r["grad_norm"] for r in history] == [r["grad_norm"] for r in engine_records]
    assert any(r["grad_norm"] > 50 for r in history)  # the clip acted
    assert [r["beta"] for r in history] == [r["kl_weight"] for r in engine_records]
    assert history[2]["lr"] == config.optim.lr and history[-1]["lr"] < history[3]["lr"]  # warm-up, then cosine
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), engine.model.parameters()))


def test_the_engine_resumes_a_run_of_the_plain_loop_as_its_own(tmp_path):
    """6 steps of the plain loop saved with engine_checkpoint, then 4 by the resumed engine: the weights
    of 10 uninterrupted engine steps, bit for bit; load_model reads the checkpoint."""
    config = override(get_preset("vae_tiny"), {"max_steps": 10, "warmup_steps": 3, "quiet": True,
                                               "eval_every": 0, "checkpoint_every": 0, "sample_every": 0})
    whole = Trainer(config, tmp_path / "whole", resume=False)
    for _ in range(config.optim.max_steps):
        whole.train_step()

    torch.manual_seed(config.run.seed)
    data, model = build_data_and_model(config)
    optimizer = make_optimizer(model.parameters(), config.optim)
    batches = GlobalBatches(data.train, config.optim.batch_size, config.run.seed)
    train_loop(model, optimizer, batches.get, override(config, {"max_steps": 6, "schedule_steps": 10}).optim)
    folder = tmp_path / "loop"
    folder.mkdir()
    save_atomic(engine_checkpoint(model, optimizer, config, data.info, 6), folder / "checkpoint.pt")
    resumed = Trainer(config, folder)
    assert resumed.step == 6 and resumed.optimizer.param_groups[0]["lr"] == config.optim.lr * lr_factor(6, config.optim)
    for _ in range(4):
        resumed.train_step()
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), whole.model.parameters()))
    loaded, loaded_config, _ = load_model(folder / "checkpoint.pt")
    assert loaded_config.model == config.model
