"""Typed, strict configs: presets inherit, short keys resolve, typos and wrong types are clear errors."""
import ast
import dataclasses
import typing

import pytest

from hvae_lib import config as cfg
from hvae_lib.config import describe, from_dict, override, to_dict
from hvae_lib.config.ranges import ConfigError
from hvae_lib.models.presets import get_preset, list_presets

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


# ----------------------------------------------------------------------------- ranges: every key, every family


def _configs_of_every_family():
    """One config per registered model family: a preset of it where one exists, else its defaults."""
    by_family = {}
    for name, _ in list_presets():
        config = get_preset(name)
        by_family.setdefault(config.model.family, config)
    for family, cls in cfg.MODEL_FAMILIES.items():
        by_family.setdefault(family, cfg.Config(model=cls()))
    return by_family


def _every_leaf():
    """(config, dotted key, field) for every model key of every family, and the shared sections once."""
    for family, config in sorted(_configs_of_every_family().items()):
        for path, (_, f) in sorted(cfg._leaves(config).items()):
            if path.startswith("model.") or family == "vae":
                yield pytest.param(config, path, f, id=f"{family}:{path}")


def _element_type(f):
    """The field's type, or its elements' type for a tuple field."""
    hint = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing), {})  # noqa: S307
    return typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint


LEAVES = list(_every_leaf())


@pytest.mark.parametrize("config,path,f", LEAVES)
def test_every_key_declares_its_range_and_its_default_is_in_it(config, path, f):
    """A key added without a range fails here: declare one with ``key(default, at_least=...)``."""
    declared = cfg.range_of(f)
    if _element_type(f) is bool:
        return  # True and False are the range
    assert declared is not None, f"{path} has no declared range: write `{f.name}: ... = key(default, at_least=...)`"
    declared.check(cfg._leaves(config)[path][0].__dict__[f.name], path)  # the preset's value is in range


@pytest.mark.parametrize("config,path,f", LEAVES)
def test_every_key_refuses_a_value_outside_its_range_in_one_sentence(config, path, f):
    """Each value outside a key's range, given as --set gives it, is refused by override (and so by
    every command line and by the Trainer, before any work) in one sentence naming the key, the
    range and the value."""
    kind, declared = _element_type(f), cfg.range_of(f)
    current = getattr(cfg._leaves(config)[path][0], f.name)
    if kind is bool:
        bad_values = ["maybe"]
    else:
        bad_values = declared.outside(kind)
        if not bad_values:
            assert declared.anything, f"{path}: a key that takes any text must say what it holds"
            return
    for bad in bad_values:
        text = ",".join([str(bad)] * len(current)) if isinstance(current, tuple) else str(bad)
        with pytest.raises(ConfigError) as err:
            override(config, [f"{path}={text}"])
        message = str(err.value)
        assert path in message and "\n" not in message and message.endswith("."), message
        if kind is not bool:
            assert declared.describe() in message and str(bad) in message, message


def test_presets_are_valid_and_validate_checks_configs_built_in_code():
    for name, _ in list_presets():
        cfg.validate(get_preset(name))
    config = get_preset("vae_tiny")
    config.optim.lr = float("nan")  # as a notebook might set it, without --set
    with pytest.raises(ConfigError, match=r"optim.lr must be finite and > 0, got nan\."):
        cfg.validate(config)
    config = get_preset("vae_tiny")
    config.run.log_every = 0
    with pytest.raises(ConfigError, match=r"run.log_every must be >= 1, got 0\."):
        cfg.validate(config)
    config.run.log_every, config.optim.max_steps = 1, 2.5
    with pytest.raises(ConfigError, match="optim.max_steps expects an int, got 2.5"):
        cfg.validate(config)


def test_rules_between_keys():
    with pytest.raises(ConfigError, match=r"optim.lr_min must be <= optim.lr .* got 0.01 > 0.002\."):
        override(get_preset("vae_tiny"), ["lr_min=0.01"])
    assert override(get_preset("vae_tiny"), ["lr_min=0.002"]).optim.lr_min == 0.002
    # a constant schedule never decays, so lr_min does not bind (VDVAE's FFHQ-1024 preset runs at lr 7e-5)
    assert override(get_preset("vae_tiny"), ["schedule=constant", "lr=5e-5"]).optim.lr == 5e-5


@pytest.mark.parametrize("assignment,expected", [
    ("lr=0", "Config key optim.lr must be > 0, got 0.0."),
    ("lr=-inf", "Config key optim.lr must be finite and > 0, got -inf."),
    ("ema_rate=1", "Config key optim.ema_rate must be in [0, 1), got 1.0."),
    ("betas=0.9,1.5", "Config key optim.betas must hold values, each in [0, 1), got (0.9, 1.5)."),
    ("groups_per_scale=2,0", "Config key model.groups_per_scale must hold values, each >= 1, got (2, 0)."),
    ("groups_per_scale=()", "Config key model.groups_per_scale must hold at least one value, each >= 1, got ()."),
    ("resolution=48", "Config key data.resolution must be a power of two >= 8, got 48."),
    ("name=no_such_data", "Config key data.name must be one of fashion_mnist"),
    ("device=cuda:a", "Config key run.device must be one of auto, cpu, cuda, cuda:<index>, got 'cuda:a'."),
    ("seed=-3", "Config key run.seed must be in [0, 4294967295], got -3."),
])
def test_range_messages_read_well(assignment, expected):
    preset = "lvae_tiny" if "groups_per_scale" in assignment else "vae_tiny"
    with pytest.raises(ConfigError) as err:
        override(get_preset(preset), [assignment])
    assert expected in str(err.value)
    assert override(get_preset("vae_tiny"), ["device=cuda:1"]).run.device == "cuda:1"
