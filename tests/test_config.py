"""Typed, strict configs: presets inherit, short keys resolve, typos and wrong types are clear errors."""
import ast
import dataclasses

import pytest

from hvae_lib import config as cfg
from hvae_lib.config import ConfigError, describe, from_dict, get_preset, list_presets, override, to_dict

SHORT_KEYS = {"max_steps": "7", "precision": "bf16", "seed": "3", "checkpoint_every": "2", "grad_checkpointing": "true"}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", [name for name, _ in list_presets()])
def test_every_preset_builds_and_takes_the_short_keys(name):
    config = override(get_preset(name), [f"{k}={v}" for k, v in SHORT_KEYS.items()])
    assert (config.optim.max_steps, config.run.precision, config.run.seed) == (7, "bf16", 3)
    assert config.run.checkpoint_every == 2 and config.run.grad_checkpointing is True
    assert from_dict(to_dict(config)) == config


def test_presets_have_one_line_descriptions():
    presets = list_presets()
    assert {"vae_fashion", "vae_tiny"} <= {name for name, _ in presets}
    assert all(desc.strip() and "\n" not in desc for _, desc in presets)


def test_a_child_preset_inherits_everything_it_does_not_change():
    parent, child = flat(to_dict(get_preset("vae_fashion"))), flat(to_dict(get_preset("vae_tiny")))
    changed = {k for k in parent if parent[k] != child[k]}
    assert changed == {"data.name", "data.resolution", "data.train_limit", "data.test_limit", "optim.batch_size",
                       "optim.max_steps", "optim.warmup_steps", "run.log_every", "run.eval_every",
                       "run.eval_batches", "run.checkpoint_every", "run.sample_every", "run.num_samples",
                       "model.channels", "model.latent_dim"}
    assert child["optim.optimizer"] == "adamax" and child["optim.lr"] == parent["optim.lr"]


def test_full_and_short_keys_and_parsing():
    c = override(get_preset("vae_tiny"), ["model.latent_dim=9", "lr=1e-3", "betas=0.9,0.99", "quiet=yes", "schedule=constant"])
    assert (c.model.latent_dim, c.optim.lr, c.optim.betas, c.run.quiet) == (9, 1e-3, (0.9, 0.99), True)
    assert get_preset("vae_tiny").model.latent_dim == 4, "override must not touch the preset it copies"
    # Values given in code are checked too: an int may stand for a float, a list for a tuple.
    c = override(c, {"lr": 1, "betas": [0.8, 0.9]})
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float) and c.optim.betas == (0.8, 0.9)


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        override(get_preset("vae_tiny"), ["max_step=10"])
    message = str(err.value)
    assert "'max_step'" in message and "optim.max_steps" in message and "model.latent_dim" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="key=value"):
        override(get_preset("vae_tiny"), ["max_steps"])


@pytest.mark.parametrize("assignment,expected", [
    ("max_steps=ten", "expects an int, got 'ten'"),
    ("lr=fast", "expects a float"),
    ("quiet=maybe", "expects a bool"),
    ("betas=0.9", r"expects a tuple\[float, float\]"),
    ("precision=fp64", "must be one of fp32, bf16, fp16"),
    ("optimizer=sgd", "must be one of adamax, adamw, adam"),
    ("schedule=cosin", "must be one of cosine, constant"),
    ("device=gpu", "run.device must be one of"),
])
def test_wrong_type_or_value_names_what_was_expected(assignment, expected):
    with pytest.raises(ConfigError, match=expected):
        override(get_preset("vae_tiny"), [assignment])


def test_python_values_of_the_wrong_type_are_refused():
    for bad in ({"max_steps": 1.5}, {"quiet": 1}, {"max_steps": True}, {"betas": 0.9}):
        with pytest.raises(ConfigError, match="expects"):
            override(get_preset("vae_tiny"), bad)


def test_an_ambiguous_short_key_lists_the_full_ones(monkeypatch):
    @dataclasses.dataclass
    class Clashing(cfg.ModelConfig):
        family: str = "clashing"
        lr: float = 0.5  # clashes with optim.lr

    monkeypatch.setitem(cfg.MODEL_FAMILIES, "clashing", Clashing)
    config = cfg.Config(model=Clashing())
    with pytest.raises(ConfigError, match="ambiguous.*model.lr.*optim.lr|ambiguous.*optim.lr.*model.lr"):
        override(config, ["lr=0.1"])
    assert override(config, ["model.lr=0.1"]).model.lr == 0.1


def test_describe_is_readable_and_round_trips():
    config = override(get_preset("vae_tiny"), ["betas=0.8,0.9", "lr=3e-4"])
    text = describe(config)
    lines = dict(line.split(" = ", 1) for line in text.splitlines())
    assert lines.pop("model.family") == "vae"
    values = {k: ast.literal_eval(v) for k, v in lines.items()}
    assert values == {k: v for k, v in flat(to_dict(config)).items() if k != "model.family"}
    assert override(get_preset("vae_tiny"), values) == config


def test_unknown_preset_and_family_name_the_known_ones():
    with pytest.raises(ConfigError, match="vae_tiny"):
        get_preset("vae_tiyn")
    d = to_dict(get_preset("vae_tiny"))
    d["model"]["family"] = "nope"
    with pytest.raises(ConfigError, match="known families: .*vae"):
        from_dict(d)
