"""Typed, strict configuration: dataclasses per concern and ``--set key=value`` (every chapter).

The bottom layer of the library besides :mod:`hvae_lib.data`: every model family declares its
hyperparameters with it (a :class:`ModelConfig` subclass, registered with :func:`model_family` and
kept beside its model in :mod:`hvae_lib.models`), so this package imports no model. The registry
of named presets is here too; the library's presets fill it from :mod:`hvae_lib.models.presets`.
The ranges every key declares, and the one-line errors they give, are in
:mod:`hvae_lib.config.ranges`.

A run is described by one :class:`Config` = model + data + optim + run. Keys are dotted paths
(``model.latent_dim``); a leaf whose name is unique across the config can be given alone
(``max_steps``, ``precision``, ``seed``). Unknown keys and wrong types are errors that name the
valid keys: a typo never silently does nothing.

Every key declares the values it accepts, beside its default, with :func:`key` (from
:mod:`hvae_lib.config.ranges`)::

    @model_family("mine")
    @dataclass
    class MyConfig(ModelConfig):
        family: str = "mine"
        channels: int = key(32, at_least=1)                      # an int >= 1
        dropout: float = key(0.0, at_least=0, below=1)           # a finite float in [0, 1)
        merge: str = key("sum", one_of=("sum", "concat"))
        widths: tuple[int, ...] = key((16, 32), at_least=1)      # each element; not empty
        use_se: bool = True                                      # a bool needs no range

Bounds are ``at_least``/``above``/``at_most``/``below``; ``one_of`` (a tuple, or a function
returning one), ``pattern`` (a regular expression, with ``pattern_text`` to show), ``power_of_two``,
and ``anything="what it is"`` for free text such as a path. :func:`validate` checks every key of a
config, its type and its range, and the rules between keys in :data:`RULES`, before any work
starts; a value outside gives one sentence naming the key, its range and the value. A key of a
type other than bool without a declared range fails ``tests/test_config.py``, which walks every
key of every registered family with a value outside its range.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from hvae_lib.config.ranges import ConfigError, key, range_of


@dataclass
class ModelConfig:
    """Base of every model family's config; subclasses register themselves with :func:`model_family`."""

    family: str = ""

    def build(self, image_shape: tuple[int, int, int], bits: int, likelihood: str):  # pragma: no cover
        raise ConfigError(f"Model family {self.family!r} has no builder.")


def _datasets() -> tuple[str, ...]:
    from hvae_lib.data.contract import DATASETS

    return DATASETS


@dataclass
class DataConfig:
    name: str = key("fashion_mnist", one_of=_datasets)
    root: str = key("", anything="a folder (empty: $HVAE_DATA_ROOT or <repo>/data)")
    resolution: int = key(32, at_least=8, power_of_two=True)  # only for the procedural 'shapes' dataset
    train_limit: int = key(0, at_least=0)  # 0 = the whole split
    test_limit: int = key(0, at_least=0)
    horizontal_flip: bool = False  # mirror training images at random (NVAE's augmentation of CIFAR-10)
    bits: int = key(0, at_least=0, at_most=8)  # 0: the dataset's own bit depth; else reduce (or keep FFHQ-256 at 8)
    vdvae_split: bool = False  # openai/vdvae's held-out split: CIFAR-10 45k/5k validation, FFHQ-256 seed-5 63k/7k
    imagenet_variant: str = key("any", one_of=("any", "oord", "chrabaszcz"))  # what a paper used; another warns once


@dataclass
class OptimConfig:
    optimizer: str = key("adamax", one_of=("adamax", "adamw", "adam"))
    lr: float = key(2e-3, above=0)
    weight_decay: float = key(0.0, at_least=0)
    betas: tuple[float, float] = key((0.9, 0.999), at_least=0, below=1)
    eps: float = key(1e-8, above=0)
    warmup_steps: int = key(100, at_least=0)
    schedule: str = key("cosine", one_of=("cosine", "constant"))
    lr_min: float = key(1e-4, at_least=0)  # at most lr (see RULES)
    schedule_steps: int = key(0, at_least=0)  # length of the cosine decay; 0 = max_steps
    batch_size: int = key(128, at_least=1)  # the global batch, split over the processes under torchrun
    max_steps: int = key(1000, at_least=1)
    grad_clip: float = key(200.0, at_least=0)  # clip the global gradient norm to this (0 = no clipping)
    skip_threshold: float = key(0.0, at_least=0)  # skip the update when the norm reaches this, as openai/vdvae (0 = never skip on size)
    max_consecutive_skips: int = key(50, at_least=1)  # then stop with an error instead of freezing silently
    ema_rate: float = key(0.0, at_least=0, below=1)  # 0 = no EMA; 0.999 keeps an exponential moving average
    kl_warmup_steps: int = key(0, at_least=0)  # beta ramps linearly from kl_warmup_start to 1 over these steps
    kl_warmup_start: float = key(1e-4, at_least=0, at_most=1)
    free_bits: float = key(0.0, at_least=0)  # nats per latent group below which the KL is not penalised
    kl_balancing: bool = False  # NVAE's per-group KL coefficients while beta < 1
    loss_per_dim: bool = False  # minimise the loss per data dimension (VDVAE), not per image: grad_clip, skip_threshold and eps are then in those units


@dataclass
class RunConfig:
    seed: int = key(0, at_least=0, at_most=2**32 - 1)
    precision: str = key("fp32", one_of=("fp32", "bf16", "fp16"))
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward (see benchmarks/RESULTS.md for when it pays)
    channels_last: bool = False  # NHWC memory layout for the model and its input
    device: str = key("auto", one_of=("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:<index>")
    log_every: int = key(25, at_least=1)
    eval_every: int = key(500, at_least=0)  # 0 = only at the end
    eval_batches: int = key(20, at_least=0)  # test batches per periodic evaluation (0 = the whole test set)
    checkpoint_every: int = key(250, at_least=0)  # 0 = only at the end (and when stopped by a signal)
    sample_every: int = key(500, at_least=0)
    num_samples: int = key(64, at_least=1)
    sample_temperature: float = key(1.0, above=0)
    quiet: bool = False
    num_workers: int = key(0, at_least=0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


MODEL_FAMILIES: dict[str, type[ModelConfig]] = {}


def model_family(name: str):
    """Class decorator: register a ModelConfig subclass under ``name``."""

    def register(cls):
        MODEL_FAMILIES[name] = cls
        return cls

    return register


# ----------------------------------------------------------------------------- overrides


def _leaves(obj, prefix="") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf field as 'dotted.path' -> (owner object, field)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        elif f.name != "family":
            out[f"{prefix}{f.name}"] = (obj, f)
    return out


def valid_keys(config: Config) -> list[str]:
    return sorted(_leaves(config))


def _resolve(config: Config, key: str) -> tuple[str, Any, dataclasses.Field]:
    leaves = _leaves(config)
    if key in leaves:
        return (key, *leaves[key])
    matches = [path for path in leaves if path.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return (matches[0], *leaves[matches[0]])
    if len(matches) > 1:
        raise ConfigError(f"Config key {key!r} is ambiguous; write one of {', '.join(matches)}.")
    raise ConfigError(f"Unknown config key {key!r}; valid keys are: {', '.join(sorted(leaves))}.")


def _parse(text: str, annotation, path: str):
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint in (int, float, str):
            return hint(text)
        if origin is tuple:
            args = typing.get_args(hint)
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            item = args[0]
            if len(args) != 2 or args[1] is not Ellipsis:
                if len(parts) != len(args):
                    raise ValueError
            return tuple(item(p) for p in parts)
        if origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(hint):
                if arg is type(None):
                    continue
                return _parse(text, arg, path)
    except ValueError:
        pass
    else:
        raise ConfigError(f"Config key {path} has a type ({hint}) that --set cannot parse.")
    name = str(hint) if origin is not None else getattr(hint, "__name__", str(hint))  # 'tuple[float, float]'
    raise ConfigError(f"Config key {path} expects {'an' if name[0] in 'aeiou' else 'a'} {name}, got {text!r}.")


def _check_value(value, annotation, path: str):
    """A Python value given in code (a preset) checked against the field's type: an int may stand
    for a float and a list for a tuple; anything else of the wrong type is an error."""
    try:
        hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    except NameError:  # an annotation naming a type defined elsewhere: left to the model to check
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif hint not in (bool, int, float, str) or type(value) is hint:
        return value
    name = str(hint) if typing.get_origin(hint) else hint.__name__
    raise ConfigError(f"Config key {path} expects {'an' if name == 'int' else 'a'} {name}, got {value!r}.")


def _lr_min_at_most_lr(config: Config) -> str:
    o = config.optim
    if o.schedule != "cosine" or o.lr_min <= o.lr:
        return ""
    return (f"Config key optim.lr_min must be <= optim.lr (the cosine decays from lr down to lr_min), "
            f"got {o.lr_min} > {o.lr}.")


# Rules between keys: each returns '' when the config keeps it, else the sentence to raise.
RULES: list[Callable[[Config], str]] = [_lr_min_at_most_lr]


def validate(config: Config) -> None:
    """Raise one ConfigError sentence for the first key whose type or value is outside its range."""
    for path, (owner, f) in _leaves(config).items():
        value = getattr(owner, f.name)
        _check_value(value, f.type, f"{path}")
        declared = range_of(f)
        if declared is not None:
            declared.check(value, f"Config key {path}")
    for rule in RULES:
        if message := rule(config):
            raise ConfigError(message)


def override(config: Config, assignments: dict[str, Any] | list[str]) -> Config:
    """A copy of ``config`` with ``{key: value}`` or ``["key=value", ...]`` applied, strictly."""
    config = copy.deepcopy(config)
    if isinstance(assignments, list):
        pairs = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}.")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value
        assignments = pairs
    for key, value in assignments.items():
        path, owner, f = _resolve(config, key)
        if isinstance(value, str) and f.type not in (str, "str"):
            value = _parse(value, f.type, path)
        setattr(owner, f.name, _check_value(value, f.type, path))
    validate(config)
    return config


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(config: Config) -> dict:
    """Plain nested dict of primitives (safe to store in a weights-only checkpoint)."""
    return dataclasses.asdict(config)


def from_dict(d: dict) -> Config:
    """The :class:`Config` that :func:`to_dict` stored; the model family must be registered, which
    importing :mod:`hvae_lib.models` does for the library's own."""
    family = d["model"].get("family", "")
    if family not in MODEL_FAMILIES:
        known = ", ".join(sorted(MODEL_FAMILIES)) or "none registered yet (import hvae_lib.models first)"
        raise ConfigError(f"Unknown model family {family!r}; known families: {known}.")

    def build(cls, values):
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}; valid: {', '.join(names)}.")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)

    return Config(
        model=build(MODEL_FAMILIES[family], d["model"]),
        data=build(DataConfig, d.get("data", {})),
        optim=build(OptimConfig, d.get("optim", {})),
        run=build(RunConfig, d.get("run", {})),
    )


def describe(config: Config) -> str:
    """The resolved config, one ``key = value`` per line (what ``DIR/config`` holds)."""
    leaves = _leaves(config)
    lines = [f"model.family = {config.model.family}"]
    lines += [f"{path} = {getattr(owner, f.name)!r}" for path, (owner, f) in sorted(leaves.items())]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the presets' registry

PRESETS: dict[str, tuple[str, Callable[[], Config]]] = {}


def preset(preset_name: str, description: str, /, parent: str | None = None, **changes):
    """Register a preset: a function returning a Config, or ``parent`` plus ``changes``.

    The library's presets register themselves in :mod:`hvae_lib.models.presets`, whose
    ``get_preset`` and ``list_presets`` read them.
    """

    def register(fn: Callable[[], Config] | None = None):
        if fn is None:
            fn = lambda: override(registered_preset(parent), changes)  # noqa: E731
        PRESETS[preset_name] = (description, fn)
        return fn

    if parent is not None:
        register()
        return None
    return register


def registered_preset(name: str) -> Config:
    """A fresh, validated copy of the preset registered as ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; available presets: {', '.join(sorted(PRESETS))}.")
    config = PRESETS[name][1]()
    validate(config)
    return config
