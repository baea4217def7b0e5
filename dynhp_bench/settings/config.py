"""Every setting of a training run, validated on construction and resolved once.

Resolution order, later wins: built-in defaults → the profile's values → a TOML settings file → the
command line. Settings a strategy does not use are stored as ``None`` (so they never change a run id),
and naming one explicitly for such a strategy is an error rather than silently ignored.

The paper leaves several choices open; they are settings here. Eq. 8's readings (each documented with
the sentence it follows in docs/fidelity.md; the defaults are SPEC's first guess):

* ``growth_cadence``: Eq. 8 applied once per ``epoch`` (default) or after every ``step``;
* ``growth_rounding``: Eq. 8's increment rounded up (``ceil``, default), down (``floor``) or to the
  ``nearest`` integer;
* ``growth_loss``: F is the mini-batch ``data`` loss (default) or the ``objective`` being minimised
  (data loss + penalty);
* ``growth_variance``: S is the variance of the per-example gradients (``examples``, default) or of
  the mini-batch mean gradient, S/B (``mean``);
* ``growth_correction``: S as Balles et al.'s code writes it (``none``, default) or with Bessel's
  correction B/(B−1) (``bessel``);
* ``growth_smoothing``: S and F as measured at each step (``none``, default) or as Balles et al.'s code
  smooths them, with running averages of constant 0.95 updated at every step (``running``).

And: ``lambda_scaling``: the L0 charge of one gate is λ·out/N (``divide_by_n``, default, the published
code's scaling in which λ = 0.01 is meaningful) or λ·out (``none``); ``ema_decay``: evaluate with an
exponential moving average of the parameters, as the published L0 code does with 0.999 (default None:
raw parameters); ``bias_init``: the MLP's biases drawn from N(0, 0.01²) (``normal``, default) or set to 0
(``zeros``, as the published L0 code's layers do).

Settings added after run ids were first published enter a run id's hash only when they differ from
their default (`DIGEST_OMITTED_AT_DEFAULT`), so the ids of runs with default settings never change.

``normalize`` and ``augment`` (per-channel normalisation; a random crop of the image padded by 4 pixels and a
horizontal flip of every training batch, `augmentation.py`) default per dataset (`data.DATASETS`): on for
``cifar10``, off for ``mnist`` and ``fashion``. Off is left out of the hash, so MNIST's run ids are unchanged.

``validation_split`` holds out the last N training images (trained on by no strategy that sets it) to
measure a validation loss after every epoch. DyPrune needs it (default 10,000 of the full set, a sixth
of a subset, its published 50,000 / 10,000 proportion); any other strategy may set it for a
like-for-like comparison, since DyPrune then trains on fewer images than the paper's strategies.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from dynhp_bench.data import datasets as data
from dynhp_bench.errors import SettingsError, shown
from dynhp_bench.memory import batch_bytes, layer_shapes, sample_bytes
from dynhp_bench.models.registry import ARCHITECTURES, DEFAULT_ARCH
from dynhp_bench.pruning.strategies import STRATEGIES

DATASETS = tuple(data.DATASETS)
STRATEGY_KEYS = tuple(STRATEGIES)
N_CLASSES = 10
# Upper bounds of every count, far above any sensible value and low enough that nothing overflows or eats memory
# before the run starts (torch seeds are 64-bit; a layer of MAX_WIDTH × 784 weights is ~300 MB).
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 1_000_000
MAX_SEED = 2**32 - 1
MAX_SUBSET = 1_000_000_000
MAX_WIDTH = 100_000
MAX_BUDGET_BYTES = 2**50


@dataclass(frozen=True)
class Profile:
    """A named set of defaults: how long to train, on how much data, and any other setting it defaults (`settings`,
    overridden like every default by a settings file or the command line)."""

    name: str
    epochs: int
    subset: int | None
    description: str
    settings: tuple[tuple[str, Any], ...] = ()


# The paper profile evaluates as the published L0 code does, with the parameter average of decay 0.999: chosen by
# the calibration in docs/fidelity.md ("Evaluation and biases"). The shorter profiles evaluate the raw parameters:
# the published average starts at the initial parameters with a correction made for a zero start, so over a few
# thousand steps it still carries a share of the initial network (2 smoke epochs: 88 % error against 42 % raw).
PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", 2, 2000, "first 2,000 training images, 2 epochs: seconds, for tests and CI"),
    "quick": Profile("quick", 20, None, "full datasets, 20 epochs: the whole reproduction in 15–30 min with 2 workers"),
    "paper": Profile(
        "paper", 2000, None, "the paper's settings: full datasets, 2,000 epochs, evaluated with the parameter "
        "average (ema_decay 0.999)", (("ema_decay", 0.999),),
    ),
}  # fmt: skip
DEFAULT_PROFILE = "quick"

# The paper's best configuration per dataset (Tables 2-3): SP/dense and HP batch sizes, DynHP's α_bs.
DEFAULT_BATCH_SIZE: dict[tuple[str, str], int] = {
    ("mnist", "dense"): 512,
    ("mnist", "sp"): 512,
    ("mnist", "hp"): 100,
    ("mnist", "dynhp"): 16,
    ("fashion", "dense"): 128,
    ("fashion", "sp"): 128,
    ("fashion", "hp"): 128,
    ("fashion", "dynhp"): 16,
    # CIFAR-10 is not in the paper: Fashion-MNIST's choices, also the usual CIFAR batch of 128 (README, CIFAR-10).
    ("cifar10", "dense"): 128,
    ("cifar10", "sp"): 128,
    ("cifar10", "hp"): 128,
    ("cifar10", "dynhp"): 16,
}
DEFAULT_BIAS_INIT = "normal"
FALLBACK_BATCH_SIZE = 128  # also DyPrune's: its published example trains at batch 128
DEFAULT_VALIDATION_SPLIT = 10_000
VALIDATION_SHARE = 6  # the published 60,000 = 50,000 + 10,000: a sixth of a subset is held out
DEFAULT_ALPHA_BS = {"mnist": 0.972, "fashion": 0.980, "cifar10": 0.980}
# The default budget C is the per-epoch memory of the dataset's best SP configuration (CIFAR-10, not in the
# paper: SP at its default batch, 128).
BUDGET_SP_BATCH = {"mnist": 512, "fashion": 128, "cifar10": 128}

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "arch": tuple(ARCHITECTURES),
    "strategy": STRATEGY_KEYS,
    "profile": tuple(PROFILES),
    "gate_draws": ("batch", "example"),
    "growth_cadence": ("epoch", "step"),
    "growth_rounding": ("ceil", "floor", "nearest"),
    "growth_loss": ("data", "objective"),
    "growth_variance": ("examples", "mean"),
    "growth_correction": ("none", "bessel"),
    "growth_smoothing": ("none", "running"),
    "lambda_scaling": ("divide_by_n", "none"),
    "prune_schedule": ("dynamic", "static"),
    "bias_init": ("normal", "zeros"),
}
_FIELD_DEFAULTS: dict[str, Any] = {
    "lam": 0.01,
    "gamma": 0.5,
    "alpha_bs": None,  # dataset-dependent: DEFAULT_ALPHA_BS
    "budget_bytes": None,  # dataset-dependent: default_budget_bytes
    "gate_draws": "batch",
    "growth_cadence": "epoch",
    "growth_rounding": "ceil",
    "growth_loss": "data",
    "growth_variance": "examples",
    "growth_correction": "none",
    "growth_smoothing": "none",
    "lambda_scaling": "divide_by_n",
    # DyPrune (SPEC §7): the published defaults; prune_rate None means the size-scaled rate.
    "prune_schedule": "dynamic",
    "prune_interval": 4,
    "slope_min": 0.0,
    "slope_max": 0.05,
    "prune_rate": None,
    "reset_optimizer": True,
    "reset_biases": False,
}
# Later settings and their defaults: left out of the run id's hash at these values (or unused, None).
DIGEST_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "arch": DEFAULT_ARCH,
    "growth_loss": "data",
    "growth_variance": "examples",
    "growth_correction": "none",
    "growth_smoothing": "none",
    "ema_decay": None,
    "validation_split": None,
    "normalize": False,
    "augment": False,
    "bias_init": "normal",
    **{name: _FIELD_DEFAULTS[name] for name in (
        "prune_schedule", "prune_interval", "slope_min", "slope_max", "prune_rate", "reset_optimizer", "reset_biases",
    )},
}  # fmt: skip
# Settings that only some strategies read (naming them for another strategy is an error).
USED_BY: dict[str, tuple[str, ...]] = {
    name: tuple(key for key, cls in STRATEGIES.items() if name in cls.settings) for name in _FIELD_DEFAULTS
}
# Names a user may write (CLI / TOML) for a field whose Python name differs.
ALIASES = {"lambda": "lam"}


def default_budget_bytes(dataset: str, hidden: tuple[int, ...], arch: str = DEFAULT_ARCH) -> int:
    """The default memory budget C: full model bytes (of `arch`) + the best SP batch of the dataset."""
    shape = data.input_shape(dataset)
    network = ARCHITECTURES[arch].model_bytes(hidden, shape)
    return network + batch_bytes(BUDGET_SP_BATCH[dataset], sample_bytes(shape))


@dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of one training run; together they determine the run id."""

    dataset: str = "mnist"
    strategy: str = "dynhp"
    profile: str = DEFAULT_PROFILE
    epochs: int = PROFILES[DEFAULT_PROFILE].epochs
    batch_size: int = 16
    seed: int = 0
    subset: int | None = None
    hidden: tuple[int, ...] = (300, 100)
    lr: float = 1e-3
    weight_decay: float = 5e-4
    lam: float | None = _FIELD_DEFAULTS["lam"]
    gamma: float | None = _FIELD_DEFAULTS["gamma"]
    alpha_bs: float | None = _FIELD_DEFAULTS["alpha_bs"]
    budget_bytes: int | None = _FIELD_DEFAULTS["budget_bytes"]
    drop_rate_input: float = 0.2
    drop_rate_hidden: float = 0.5
    gate_draws: str | None = _FIELD_DEFAULTS["gate_draws"]
    growth_cadence: str | None = _FIELD_DEFAULTS["growth_cadence"]
    growth_rounding: str | None = _FIELD_DEFAULTS["growth_rounding"]
    lambda_scaling: str | None = _FIELD_DEFAULTS["lambda_scaling"]
    validation_split: int | None = None
    prune_schedule: str | None = _FIELD_DEFAULTS["prune_schedule"]
    prune_interval: int | None = _FIELD_DEFAULTS["prune_interval"]
    slope_min: float | None = _FIELD_DEFAULTS["slope_min"]
    slope_max: float | None = _FIELD_DEFAULTS["slope_max"]
    prune_rate: float | None = _FIELD_DEFAULTS["prune_rate"]
    reset_optimizer: bool | None = _FIELD_DEFAULTS["reset_optimizer"]
    reset_biases: bool | None = _FIELD_DEFAULTS["reset_biases"]
    growth_loss: str | None = _FIELD_DEFAULTS["growth_loss"]
    growth_variance: str | None = _FIELD_DEFAULTS["growth_variance"]
    growth_correction: str | None = _FIELD_DEFAULTS["growth_correction"]
    growth_smoothing: str | None = _FIELD_DEFAULTS["growth_smoothing"]
    ema_decay: float | None = None
    normalize: bool | None = None
    augment: bool | None = None
    arch: str = DEFAULT_ARCH
    bias_init: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise SettingsError(f"{_flag(name)}={shown(value)} is not known; expected one of {', '.join(allowed)}")
        # Unused settings are None; used ones left None take their defaults (dataset-dependent for DynHP).
        for name, used_by in USED_BY.items():
            if self.strategy not in used_by:
                object.__setattr__(self, name, None)
            elif getattr(self, name) is None:
                object.__setattr__(self, name, _FIELD_DEFAULTS.get(name))
        if self.arch == DEFAULT_ARCH and self.bias_init is None:
            object.__setattr__(self, "bias_init", DEFAULT_BIAS_INIT)
        elif self.arch != DEFAULT_ARCH and self.bias_init is not None:
            raise SettingsError(
                f"--bias-init={self.bias_init!r} does not apply to --arch={self.arch!r}; it sets the MLP's biases"
            )
        spec = data.DATASETS[self.dataset]
        for name, default in (("normalize", spec.normalize), ("augment", spec.augment)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            elif not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{_flag(name)}={shown(getattr(self, name))} is not valid; expected true or false")
        budget_given = self.budget_bytes is not None
        if self.strategy == "dynhp":
            if self.alpha_bs is None:
                object.__setattr__(self, "alpha_bs", DEFAULT_ALPHA_BS[self.dataset])
            if self.budget_bytes is None and _is_hidden(self.hidden):
                object.__setattr__(self, "budget_bytes", default_budget_bytes(self.dataset, self.hidden, self.arch))
        if STRATEGIES[self.strategy].prunes_weights and not ARCHITECTURES[self.arch].network.supports_weight_pruning:
            raise SettingsError(
                f"--strategy={self.strategy!r} prunes single weights, which --arch={self.arch!r} does not support; "
                "expected --arch mlp"
            )
        if STRATEGIES[self.strategy].needs_validation_loss and self.validation_split is None:
            default = DEFAULT_VALIDATION_SPLIT if self.subset is None else max(1, self.subset // VALIDATION_SHARE)
            object.__setattr__(self, "validation_split", default)
        _check_int("epochs", self.epochs, low=1, high=MAX_EPOCHS)
        _check_int("batch_size", self.batch_size, low=1, high=MAX_BATCH_SIZE)
        _check_int("seed", self.seed, low=0, high=MAX_SEED)
        if self.subset is not None:
            _check_int("subset", self.subset, low=1, high=MAX_SUBSET)
        if not _is_hidden(self.hidden):
            widths = ",".join(str(h) for h in self.hidden) if isinstance(self.hidden, tuple) else self.hidden
            raise SettingsError(
                f"--hidden={shown(widths)} is not valid; expected two positive layer widths (≤ {MAX_WIDTH}) "
                "like 300,100"
            )
        _check_open("lr", self.lr, 0.0, math.inf)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_open("drop_rate_input", self.drop_rate_input, 0.0, 1.0)
        _check_open("drop_rate_hidden", self.drop_rate_hidden, 0.0, 1.0)
        if self.lam is not None:
            _check_open("lam", self.lam, 0.0, 1.0)
        if self.gamma is not None:
            _check_range("gamma", self.gamma, 0.0, 1.0)
        if self.alpha_bs is not None:
            _check_range("alpha_bs", self.alpha_bs, 0.0, 1.0)
        if self.validation_split is not None:
            _check_int("validation_split", self.validation_split, low=1, high=MAX_SUBSET)
            if self.subset is not None and self.validation_split >= self.subset:
                raise SettingsError(
                    f"--validation-split={self.validation_split} leaves no training images of --subset={self.subset}; "
                    f"expected fewer than {self.subset}"
                )
        if self.prune_interval is not None:
            _check_int("prune_interval", self.prune_interval, low=1, high=MAX_EPOCHS)
        for name in ("slope_min", "slope_max"):
            if getattr(self, name) is not None and not _is_number(getattr(self, name)):
                raise SettingsError(f"{_flag(name)}={shown(getattr(self, name))} is not valid; expected a number")
        if self.slope_min is not None and self.slope_max is not None and self.slope_min > self.slope_max:
            raise SettingsError(
                f"--slope-min={self.slope_min} is above --slope-max={self.slope_max}; expected min ≤ max"
            )
        if self.prune_rate is not None:
            _check_range("prune_rate", self.prune_rate, 0.0, 1.0)
        for name in ("reset_optimizer", "reset_biases"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{_flag(name)}={shown(getattr(self, name))} is not valid; expected true or false")
        if self.ema_decay is not None:
            if not _is_number(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
                raise SettingsError(
                    f"--ema-decay={self.ema_decay!r} is outside [0, 1); expected a number in it (0: off)"
                )
            if self.ema_decay == 0:  # "off": evaluate the raw parameters (what the run id of no average says too)
                object.__setattr__(self, "ema_decay", None)
        if self.budget_bytes is not None:
            _check_int("budget_bytes", self.budget_bytes, low=1, high=MAX_BUDGET_BYTES)
            network = self.full_model_bytes
            first_batch = batch_bytes(self.batch_size, self.sample_bytes)
            needed = network + first_batch
            if self.budget_bytes < needed and budget_given:
                raise SettingsError(
                    f"--budget-bytes={self.budget_bytes} is smaller than the network ({network:,} bytes) plus its "
                    f"first batch of {self.batch_size:,} ({first_batch:,} bytes); "
                    f"expected at least {needed:,}"
                )
            if self.budget_bytes < needed:
                raise SettingsError(
                    f"--batch-size={self.batch_size}: a first batch of {self.batch_size:,} does not fit DynHP's "
                    f"default memory budget for {self.dataset} ({self.budget_bytes:,} bytes: the network plus a "
                    f"batch of {BUDGET_SP_BATCH[self.dataset]}); raise it with --budget-bytes {needed} or more"
                )

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each Linear layer of the full MLP (``arch = "mlp"``; its input: every value of the
        dataset's image)."""
        return layer_shapes((math.prod(data.input_shape(self.dataset)), *self.hidden, N_CLASSES))

    @property
    def sample_bytes(self) -> int:
        """One training sample's bytes in the paper's memory metric (4 × the values of one image)."""
        return sample_bytes(data.input_shape(self.dataset))

    @property
    def full_model_bytes(self) -> int:
        """Model bytes of the full (unpruned) network of this run's architecture."""
        return ARCHITECTURES[self.arch].model_bytes(self.hidden, data.input_shape(self.dataset))

    @property
    def gated(self) -> bool:
        """Whether the network carries hard-concrete gates (every strategy but `dense`)."""
        return STRATEGIES[self.strategy].uses_gates

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (``lam`` is written ``lambda``)."""
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        data["lambda"] = data.pop("lam")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output (as stored in a run's config.json)."""
        values = {ALIASES.get(k, k): v for k, v in data.items()}
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)

    @property
    def run_id(self) -> str:
        """A readable, stable id: the key settings, then a hash of all of them."""
        hashed = {
            k: v
            for k, v in self.to_dict().items()
            if k not in DIGEST_OMITTED_AT_DEFAULT or v not in (None, DIGEST_OMITTED_AT_DEFAULT[k])
        }
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:8]
        named_arch = [self.arch] if self.arch != DEFAULT_ARCH else []  # today's MLP ids stay as they were
        parts = [self.dataset, *named_arch, self.strategy, f"b{self.batch_size}"]
        if self.alpha_bs is not None:
            parts.append(f"a{self.alpha_bs:g}")
        parts += [f"e{self.epochs}", f"s{self.seed}", digest]
        return "-".join(parts)


def resolve_config(cli: Mapping[str, Any], *, settings_file: Path | None = None) -> TrainConfig:
    """Resolve a TrainConfig: defaults, then profile, then `settings_file` (TOML), then `cli`.

    `cli` holds only what the user gave (``None`` values are treated as not given). An error in a value the
    settings file gave names the file.
    """
    from_file = _read_settings_file(settings_file) if settings_file is not None else {}
    from_cli = {ALIASES.get(k, k): v for k, v in cli.items() if v is not None}
    try:
        return _resolve({**from_file, **from_cli})
    except SettingsError as exc:
        text = str(exc)
        file_only = set(from_file) - set(from_cli)
        if any(f"{_flag(k)}=" in text or shown(k) in text for k in file_only) or text.startswith("settings could"):
            raise SettingsError(f"settings file {str(settings_file)!r}: {text}") from None
        raise


def _resolve(given: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise SettingsError(f"unknown setting {shown(unknown[0])}; expected one of {', '.join(sorted(known))}")

    dataset = given.get("dataset", TrainConfig.dataset)
    strategy = given.get("strategy", TrainConfig.strategy)
    profile_name = given.get("profile", DEFAULT_PROFILE)
    for name, value in (("dataset", dataset), ("strategy", strategy), ("profile", profile_name)):
        if value not in CHOICES[name]:
            raise SettingsError(
                f"{_flag(name)}={shown(value)} is not known; expected one of {', '.join(CHOICES[name])}"
            )
    profile = PROFILES[profile_name]
    arch = given.get("arch", DEFAULT_ARCH)
    if "hidden" in given and arch != DEFAULT_ARCH:
        raise SettingsError(f"--hidden does not apply to --arch={shown(arch)}; it sets the widths of --arch mlp")

    for name, used_by in USED_BY.items():
        if name in given and strategy not in used_by:
            raise SettingsError(
                f"{_flag(name)}={shown(given[name])} does not apply to strategy {shown(strategy)}; "
                f"it is used by {', '.join(used_by)}"
            )
    values: dict[str, Any] = {
        "epochs": profile.epochs,
        "subset": profile.subset,
        **dict(profile.settings),
        "batch_size": DEFAULT_BATCH_SIZE.get((dataset, strategy), FALLBACK_BATCH_SIZE),
        **given,
        "dataset": dataset,
        "strategy": strategy,
        "profile": profile_name,
    }
    if "hidden" in values:
        values["hidden"] = _as_hidden(values["hidden"])
    try:
        return TrainConfig(**values)
    except TypeError as exc:  # a value of the wrong type from a settings file
        raise SettingsError(f"settings could not be read: {exc}") from None


def _read_settings_file(path: Path) -> dict[str, Any]:
    where = f"settings file {str(path)!r}"
    data = read_toml_file(path, where=where, expected="a TOML file")
    table = data.get("train", data)
    if not isinstance(table, dict):
        raise SettingsError(f"settings file {str(path)!r}: [train] must be a table of settings")
    beside = sorted(k for k in data if k != "train") if "train" in data else []
    if beside:
        raise SettingsError(
            f"settings file {str(path)!r}: key {shown(beside[0])} is outside the [train] table; expected every setting "
            "inside [train] (or none of them: a file without [train])"
        )
    check_setting_types(table, where)
    return {ALIASES.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in table.items()}


# Settings and sweep files are a few lines: anything larger is not one (and a /dev/zero would never end).
MAX_FILE_BYTES = 2**20
INT64 = (-(2**63), 2**63 - 1)  # TOML's integers


def read_toml_file(path: Path, *, where: str, expected: str) -> dict[str, Any]:
    """Read a settings or sweep file: at most `MAX_FILE_BYTES`, valid UTF-8 TOML, nested no deeper than the parser
    goes, every integer within TOML's 64 bits; anything else is a SettingsError starting with `where`."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SettingsError(f"{where} does not exist; expected {expected}") from None
    except OSError as exc:
        raise SettingsError(f"{where} cannot be read ({exc.strerror or exc}); expected {expected}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsError(f"{where} is larger than {MAX_FILE_BYTES // 2**20} MiB; expected {expected} of a few lines")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise SettingsError(f"{where} nests arrays or tables too deeply to be read; expected {expected}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:  # ValueError: an integer of 4,300 digits
        raise SettingsError(f"{where} is not valid TOML: {exc}") from None
    _check_integers(data, where)
    return data


def _check_integers(data: Any, where: str) -> None:
    """Refuse an integer outside TOML's 64 bits (Python's parser takes any): no setting needs one."""
    stack = [data]
    while stack:  # no recursion: the parser already allowed the document's depth
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise SettingsError(f"{where}: the integer {shown(value)} is outside TOML's 64-bit integers")


def toml_type(value: object) -> str:
    """What a value read from a TOML file is, in TOML's words ("a string", "an array", …)."""
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a float"),
                       (datetime.datetime, "a date-time"), (datetime.date, "a date"), (datetime.time, "a time"),
                       (list, "an array"), (dict, "a table")):  # fmt: skip
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _setting_kinds() -> dict[str, tuple[tuple[type, ...], str]]:
    """Per setting, the TOML types a file may give it and how to say so, from `TrainConfig`'s annotations."""
    kinds: dict[str, tuple[tuple[type, ...], str]] = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        base = next(t for t in members if t is not type(None))
        base = typing.get_origin(base) or base  # tuple[int, ...] → tuple
        if base is tuple:
            kinds[name] = ((str, list), 'two widths, as a string like "300,100" or an array like [300, 100]')
        elif base is bool:
            kinds[name] = ((bool,), "true or false")
        elif base is int:
            kinds[name] = ((int,), "an integer")
        elif base is float:
            kinds[name] = ((int, float), "a number")
        else:
            choices = f": one of {', '.join(CHOICES[name])}" if name in CHOICES else ""
            kinds[name] = ((str,), f"a string{choices}")
    return kinds


def check_setting_types(table: Mapping[str, Any], where: str) -> None:
    """Refuse a setting of a TOML file (`train --config`, a sweep group's `settings`) whose value has the wrong TOML
    type, naming the key as written; unknown keys are left to the resolution, which names them."""
    kinds = _setting_kinds()
    for key, value in table.items():
        name = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in kinds:
            continue
        allowed, expected = kinds[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise SettingsError(f"{where}: {key} = {shown(value)} is {toml_type(value)}; expected {expected}")


def _is_hidden(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH for h in value)
    )


def _as_hidden(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):  # int() takes "٣٠٠" and "1_0"
            raise SettingsError(f"--hidden={shown(value)} is not valid; expected two widths like 300,100")
        return tuple(int(p) for p in parts)
    if not isinstance(value, list | tuple):
        raise SettingsError(f"--hidden={shown(value)} is not valid; expected two widths like 300,100 or [300, 100]")
    return tuple(value)


def _flag(name: str) -> str:
    return "--" + {"lam": "lambda"}.get(name, name).replace("_", "-")


def _check_int(name: str, value: Any, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{_flag(name)}={shown(value)} is not valid; expected an integer from {low} to {high}")
    check_count(_flag(name), value, low=low, high=high)


def check_count(flag: str, value: int | None, *, low: int, high: int, why: str = "") -> None:
    """Refuse a command-line count outside [low, high] with one line naming the flag (None is "not given")."""
    if value is not None and not low <= value <= high:
        text = str(value) if abs(value) < 10**30 else f"{Decimal(value):.3e}"  # a float overflows past 1e308
        raise SettingsError(f"{flag}={text} is not valid; expected an integer from {low} to {high}{why}")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)  # isfinite overflows on an int beyond the floats


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise SettingsError(f"{_flag(name)}={shown(value)} is outside [{low:g}, {high:g}]; expected a number in it")


def _check_open(name: str, value: Any, low: float, high: float) -> None:
    if not _is_number(value) or not low < value < high:
        raise SettingsError(f"{_flag(name)}={shown(value)} is outside ({low:g}, {high:g}); expected a number in it")
