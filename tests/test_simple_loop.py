"""hvae_lib.training.simple_loop: Chapter 1's plain loop computes what the engine computes."""
import torch

from hvae_lib.config import override
from hvae_lib.models.presets import get_preset
from hvae_lib.training.engine import Trainer, build_data_and_model
from hvae_lib.training.optim import make_optimizer
from hvae_lib.training.run_log import GlobalBatches
from hvae_lib.training.simple_loop import train_loop


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
