"""What a sweep is: groups of fixed settings, each sweeping one parameter over exact values, and the runs they
expand to.

A sweep comes from a TOML file (``sweeps/*.toml``) or from the command line; both become a `SweepSpec`. `expand`
resolves every point × seed through `resolve_config`, so each run id and run folder is exactly the one `train`
would use, and every user error is found before anything is written.

Ranges are parsed with `Decimal`, so ``0.971:0.989`` is exactly 19 points 0.971, 0.972, …, 0.989, each the same
float that ``--alpha-bs 0.972`` gives `train`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from dynhp_bench.errors import SettingsError, shown
from dynhp_bench.settings.config import (
    ALIASES,
    MAX_SEED,
    TrainConfig,
    check_setting_types,
    read_toml_file,
    resolve_config,
    toml_type,
)

# The parameters a sweep may vary, with the type of their values.
SWEEPABLE: dict[str, type] = {"lambda": float, "gamma": float, "alpha_bs": float, "batch_size": int}
SAMPLERS = ("tpe", "random")
MAX_POINTS = 10_000
MAX_RUNS = 100_000  # points × seeds over every group: each is a resolved setting held in memory and in the plan
MAX_PLACES = 12  # decimal places of a swept value or step (finer ones are no different as float settings)
MAX_MAGNITUDE = 12  # powers of ten of a swept value or step (a batch size of 10¹² is already absurd)
# Every key of a sweep file: the TOML types it may have, and an example of one (`_check_types`).
SWEEP_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), 'a string like "table2_mnist"'),
    "description": ((str,), 'a string like "Table 2"'),
    "seeds": ((list, str), "an array like [0, 1, 2]"),
}
GROUP_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), 'a string like "dynhp"'),
    "param": ((str,), f"a string: one of {', '.join(SWEEPABLE)}"),
    "range": ((str,), 'a string like "0.971:0.975"'),
    "values": ((list,), "an array like [16, 32, 64]"),
    "seeds": ((list, str), "an array like [0, 1, 2]"),
    "trials": ((int,), "an integer like 20"),
    "sampler": ((str,), f"a string: one of {', '.join(SAMPLERS)}"),
    "settings": ((dict,), 'a table like { dataset = "mnist", strategy = "sp" }'),
}
GROUP_KEYS = tuple(GROUP_TYPES)
SWEEP_KEYS = tuple(SWEEP_TYPES)
# The sweep files of the paper's tables and figures (`reproduce` runs them all), beside the package in a checkout.
SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
PAPER_SWEEPS = ("table2_mnist", "table3_fashion", "fig3_mnist_batch", "fig4_fashion_batch")
# Every strategy at its best settings, DyPrune included (`reproduce --competitors`, `report`'s competitors tables).
COMPETITOR_SWEEPS = {"mnist": "competitors_mnist", "fashion": "competitors_fashion"}


@dataclass(frozen=True)
class Search:
    """Let an Optuna sampler pick `trials` points of a group's range instead of running all of them."""

    trials: int
    sampler: str
    low: Decimal
    high: Decimal
    step: Decimal


@dataclass(frozen=True)
class Group:
    """Fixed settings plus one swept parameter: every value × every seed is one run (or, with `search`, a
    candidate the sampler may pick)."""

    name: str
    param: str
    values: tuple[Decimal, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None
    search: Search | None = None
    origin: str = ""  # where the values were typed (e.g. "--values='0,1'"), named when one is refused


@dataclass(frozen=True)
class SweepSpec:
    """A named sweep: one or more groups, as written in a sweep file or on the command line."""

    name: str
    groups: tuple[Group, ...]
    description: str = ""
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: the swept value, the seed and the resolved settings."""

    value: Decimal
    seed: int
    config: TrainConfig

    @functools.cached_property
    def run_id(self) -> str:
        """The run id (and run folder name), exactly `train`'s."""
        return self.config.run_id


@dataclass(frozen=True)
class ResolvedGroup:
    """A group with every point resolved, and the Optuna study that records its trials."""

    name: str
    study: str
    param: str
    points: tuple[Point, ...]
    search: Search | None = None

    @property
    def run_ids(self) -> list[str]:
        """Every run id of the group, in grid order."""
        return [p.run_id for p in self.points]

    @property
    def size(self) -> int:
        """Trials that finish the group: one per point (grid), or the number asked for (search)."""
        return self.search.trials if self.search else len(self.points)


@dataclass(frozen=True)
class Sweep:
    """A sweep ready to run: its groups resolved into points."""

    name: str
    description: str
    groups: tuple[ResolvedGroup, ...]

    @property
    def points(self) -> list[Point]:
        """Every point of every group (a run shared by two groups appears twice)."""
        return [p for g in self.groups for p in g.points]


def parse_range(param: str, text: str) -> tuple[Decimal, Decimal, Decimal]:
    """Parse ``A:B[:STEP]`` into exact bounds and step; STEP defaults to one unit of the finest decimal given."""
    _kind(param)
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SettingsError(f"range {shown(text)} is not valid; expected A:B or A:B:STEP, e.g. 0.971:0.989")
    low, high = (_decimal(param, p, what=f"range {shown(text)}") for p in parts[:2])
    if len(parts) == 3:
        step = _decimal(param, parts[2], what=f"range {shown(text)}")
    else:
        places = max(-_exponent(low), -_exponent(high), 0)
        step = Decimal(1).scaleb(-places)
    if low > high:
        raise SettingsError(f"range {shown(text)} is reversed; expected A ≤ B, e.g. {parts[1]}:{parts[0]}")
    if step <= 0:
        raise SettingsError(f"range {shown(text)} has step {step}; expected a positive step")
    if low < high and step > high - low:
        raise SettingsError(
            f"range {shown(text)} has step {step}, larger than the range {high - low}; expected a smaller step"
        )
    count, remainder = divmod(high - low, step)
    if remainder != 0:
        raise SettingsError(
            f"range {shown(text)}: step {step} does not divide {high - low}; expected B − A to be a multiple of STEP"
        )
    if count + 1 > MAX_POINTS:
        raise SettingsError(f"range {shown(text)} has {count + 1} points; expected at most {MAX_POINTS}")
    return low, high, step


def range_points(low: Decimal, high: Decimal, step: Decimal) -> tuple[Decimal, ...]:
    """Every point of an exact range, both ends included."""
    count = int((high - low) / step)
    return tuple(low + i * step for i in range(count + 1))


def parse_values(param: str, values: str | Sequence[Any]) -> tuple[Decimal, ...]:
    """Parse ``v1,v2,…`` (or a TOML array) into exact values, each once."""
    items = [v for v in values.split(",") if v.strip()] if isinstance(values, str) else list(values)
    if not items:
        raise SettingsError(f"no values given for {param}; expected a list like 16,32,64")
    parsed = tuple(_decimal(param, v, what="values") for v in items)
    seen: set[Decimal] = set()
    for value in parsed:
        if value in seen:
            raise SettingsError(f"value {value} of {param} is listed twice; expected each value once")
        seen.add(value)
    if len(parsed) > MAX_POINTS:
        raise SettingsError(f"{len(parsed)} values of {param}; expected at most {MAX_POINTS}")
    return parsed


def parse_seeds(seeds: str | Sequence[Any]) -> tuple[int, ...]:
    """Parse ``0,1,2`` (or a TOML array) into distinct seeds from 0 to `MAX_SEED`, at most `MAX_POINTS` of them."""
    if not isinstance(seeds, str | list | tuple):
        raise SettingsError(f"seeds={shown(seeds)} is not valid; expected a list like 0,1,2 (in a file: [0, 1, 2])")
    items = [s.strip() for s in seeds.split(",") if s.strip()] if isinstance(seeds, str) else list(seeds)
    if len(items) > MAX_POINTS:
        raise SettingsError(f"{len(items)} seeds given; expected at most {MAX_POINTS}")
    parsed: list[int] = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, str) and item.isascii() and item.isdigit() and len(item) <= 10:  # int() takes "٣", "²"
            seed = int(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            seed = item
        else:
            raise SettingsError(f"seed {shown(item)} is not valid; expected integers from 0 to {MAX_SEED} like 0,1,2")
        if not 0 <= seed <= MAX_SEED:
            raise SettingsError(f"seed {seed} is not valid; expected integers from 0 to {MAX_SEED} like 0,1,2")
        if seed in seen:
            raise SettingsError(f"seed {seed} is listed twice; expected each seed once")
        seen.add(seed)
        parsed.append(seed)
    if not parsed:
        raise SettingsError("no seeds given; expected a list like 0,1,2")
    return tuple(parsed)


def make_group(
    *,
    name: str,
    param: str,
    range_text: str | None = None,
    values: str | Sequence[Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    seeds: tuple[int, ...] | None = None,
    trials: int | None = None,
    sampler: str | None = None,
) -> Group:
    """Build one group from a range or a value list (exactly one of them), checking it on the way."""
    _kind(param)
    if (range_text is None) == (values is None):
        raise SettingsError(f"{param}: give exactly one of a range (A:B[:STEP]) or a list of values")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise SettingsError(f"trials={shown(trials)} is not valid; expected an integer ≥ 1")
    if sampler is not None and trials is None:
        raise SettingsError(f"sampler={shown(sampler)} only applies with trials; expected trials = N as well")
    if sampler is not None and sampler not in SAMPLERS:
        raise SettingsError(f"sampler={shown(sampler)} is not known; expected one of {', '.join(SAMPLERS)}")
    search: Search | None = None
    if range_text is not None:
        low, high, step = parse_range(param, range_text)
        points = range_points(low, high, step)
        if trials is not None:
            search = Search(trials, sampler or "tpe", low, high, step)
    elif values is not None:
        if trials is not None:
            raise SettingsError(f"trials={trials} needs a range to search; expected --range A:B[:STEP], not values")
        points = parse_values(param, values)
    fixed = {setting_name(k): v for k, v in (settings or {}).items()}
    if setting_name(param) in fixed:
        raise SettingsError(f"{param} is swept in group {shown(name)}; it cannot also be a fixed setting")
    if "seed" in fixed:
        raise SettingsError(f"group {shown(name)} fixes a seed; expected seeds = [..] (or --seeds) instead")
    return Group(name=name, param=param, values=points, settings=fixed, seeds=seeds, search=search)


def read_sweep_file(path: Path) -> SweepSpec:
    """Read and check a sweep file (schema in sweeps/README.md): every key's TOML type is checked here, before any
    value is used."""
    where = f"sweep file {str(path)!r}"
    data = read_toml_file(path, where=where, expected="a TOML file like sweeps/NAME.toml")
    _only_keys(data, ("sweep", "groups"), where)
    head = data.get("sweep", {})
    if not isinstance(head, dict):
        raise SettingsError(f"{where}: [sweep] must be a table with name and description")
    _only_keys(head, SWEEP_KEYS, f"{where} [sweep]")
    _check_types(head, SWEEP_TYPES, f"{where} [sweep]")
    name = head.get("name", Path(path).stem)
    _check_name(name, f"{where} [sweep] name")
    seeds = parse_seeds(head["seeds"]) if "seeds" in head else (0,)
    groups_data = data.get("groups")
    if not isinstance(groups_data, list) or not groups_data:
        raise SettingsError(f"{where} has no [[groups]]; expected at least one group with a param and values or range")
    groups: list[Group] = []
    for index, raw in enumerate(groups_data, start=1):
        label = f"{where} group {index}"
        if not isinstance(raw, dict):
            raise SettingsError(f"{label} must be a table")
        _only_keys(raw, GROUP_KEYS, label)
        for key in ("name", "param"):
            if key not in raw:
                raise SettingsError(f'{label} has no {key}; expected {key} = "..."')
        _check_types(raw, GROUP_TYPES, label)
        _check_name(raw["name"], f"{label} name")
        check_setting_types(raw.get("settings", {}), f"{label} settings")
        range_text = raw.get("range")
        values = raw.get("values")
        try:
            groups.append(
                make_group(
                    name=raw["name"],
                    param=raw["param"],
                    range_text=range_text,
                    values=values,
                    settings=raw.get("settings", {}),
                    seeds=parse_seeds(raw["seeds"]) if "seeds" in raw else None,
                    trials=raw.get("trials"),
                    sampler=raw.get("sampler"),
                )
            )
        except SettingsError as exc:
            raise SettingsError(f"{label} ({raw['name']}): {exc}") from None
    names = [g.name for g in groups]
    for group_name in names:
        if names.count(group_name) > 1:
            raise SettingsError(f"{where}: group name {shown(group_name)} is used twice; expected unique names")
    return SweepSpec(name=name, description=head.get("description", ""), groups=tuple(groups), seeds=seeds)


def expand(
    spec: SweepSpec,
    *,
    overrides: Mapping[str, Any] | None = None,
    seeds: tuple[int, ...] | None = None,
    settings_file: Path | None = None,
) -> Sweep:
    """Resolve every point × seed of every group into a `TrainConfig` (raising on the first bad one).

    Settings resolve as for `train`: defaults → profile → `settings_file` → the group's settings → `overrides`.
    `seeds` (the command line's) replaces the groups' and the file's seeds.
    """
    given = {setting_name(k): v for k, v in (overrides or {}).items() if v is not None}
    runs = sum(len(g.values) * len(seeds or g.seeds or spec.seeds) for g in spec.groups)
    if runs > MAX_RUNS:
        raise SettingsError(
            f"sweep {shown(spec.name)} has {runs} runs (points × seeds over its groups); expected at most {MAX_RUNS}"
        )
    groups: list[ResolvedGroup] = []
    for group in spec.groups:
        try:
            if setting_name(group.param) in given:
                raise SettingsError(f"{_flag(group.param)} is the swept parameter; it cannot also be fixed")
            group_seeds = seeds or group.seeds or spec.seeds
            points = tuple(
                Point(value, seed, _resolve_point(group, value, seed, given, settings_file))
                for value in group.values
                for seed in group_seeds
            )
        except SettingsError as exc:
            if len(spec.groups) == 1:
                raise
            raise SettingsError(f"{spec.name} group {shown(group.name)}: {exc}") from None
        study = f"{spec.name}.{group.name}.{points[0].config.profile}"
        groups.append(ResolvedGroup(group.name, study, group.param, points, group.search))
    return Sweep(spec.name, spec.description, tuple(groups))


def combine(sweeps: Sequence[Sweep], *, name: str, description: str = "") -> Sweep:
    """One sweep holding the groups of several (so workers move on to the next file's points without a pause)."""
    return Sweep(name, description, tuple(g for s in sweeps for g in s.groups))


def command_line_spec(
    param: str,
    *,
    range_text: str | None,
    values: str | None,
    settings: Mapping[str, Any],
    trials: int | None = None,
    sampler: str | None = None,
    name: str | None = None,
) -> SweepSpec:
    """The one-group sweep that ``dynhp-bench sweep PARAM …`` describes; its default name is stable per sweep."""
    named = ("dataset", "arch", "strategy") if settings.get("arch", TrainConfig.arch) != TrainConfig.arch else ()
    named = named or ("dataset", "strategy")
    group_name = "-".join(str(settings.get(k, getattr(TrainConfig, k))) for k in named)
    try:
        group = make_group(
            name=group_name, param=param, range_text=range_text, values=values, settings={}, trials=trials,
            sampler=sampler,
        )  # fmt: skip
    except SettingsError as exc:  # name the flag the text came from, as typed
        message = str(exc)
        if message.startswith("range "):
            message = "--range=" + message.removeprefix("range ")
        elif values is not None and range_text is None:
            message = f"--values={shown(values)}: {message}"
        raise SettingsError(message) from None
    origin = f"--range={shown(range_text)}" if range_text is not None else f"--values={shown(values)}"
    group = dataclasses.replace(group, origin=origin)
    if name is None:
        described = {
            "param": param,
            "values": [str(v) for v in group.values],
            "settings": {k: v for k, v in sorted(settings.items()) if v is not None},
            "sampler": group.search.sampler if group.search else None,
        }
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:6]
        name = f"{param}-{digest}"
    _check_name(name, "--name")
    return SweepSpec(name=name, groups=(group,), description=f"dynhp-bench sweep {param}")


def value_setting(param: str, value: Decimal) -> int | float:
    """The setting's Python value for a swept value (the same float `train` parses from the text)."""
    return int(value) if SWEEPABLE[param] is int else float(value)


def _resolve_point(
    group: Group, value: Decimal, seed: int, given: Mapping[str, Any], settings_file: Path | None
) -> TrainConfig:
    """A point's settings; a swept value the settings refuse is named with where it was typed."""
    try:
        return _resolve(group, value, seed, given, settings_file)
    except SettingsError as exc:
        if group.origin and _flag(group.param) in str(exc):
            raise SettingsError(f"{group.origin} gives {group.param}={value}: {exc}") from None
        raise


def _resolve(
    group: Group, value: Decimal, seed: int, given: Mapping[str, Any], settings_file: Path | None
) -> TrainConfig:
    cli = {**group.settings, **given, setting_name(group.param): value_setting(group.param, value), "seed": seed}
    return resolve_config(cli, settings_file=settings_file)


def _kind(param: str) -> type:
    if param not in SWEEPABLE:
        raise SettingsError(f"parameter {shown(param)} cannot be swept; expected one of {', '.join(SWEEPABLE)}")
    return SWEEPABLE[param]


def _decimal(param: str, raw: Any, *, what: str) -> Decimal:
    kind = SWEEPABLE[param]
    if isinstance(raw, bool) or not isinstance(raw, str | int | float) or (isinstance(raw, str) and not raw.isascii()):
        raise SettingsError(f"{what}: {shown(raw)} is not a number; expected {kind.__name__} values for {param}")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise SettingsError(
            f"{what}: {shown(str(raw).strip())} is not a number; expected {kind.__name__} values for {param}"
        ) from None
    if not value.is_finite():
        raise SettingsError(f"{what}: {shown(raw)} is not finite; expected a number for {param}")
    if value != 0 and (value.adjusted() > MAX_MAGNITUDE or _places(value) > MAX_PLACES):
        raise SettingsError(
            f"{what}: {shown(str(raw).strip())} is out of bounds; expected at most {MAX_PLACES} decimal places and "
            f"magnitude below 1e{MAX_MAGNITUDE + 1} for {param}"
        )
    if kind is int and value != value.to_integral_value():
        raise SettingsError(f"{what}: {shown(raw)} is not a whole number; expected integers for {param}")
    return value if kind is float else Decimal(int(value))


def _places(value: Decimal) -> int:
    """Decimal places of `value`, trailing zeros not counted (0.500 has 1)."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 0
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(-(exponent + zeros), 0)


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


def setting_name(name: str) -> str:
    """The `TrainConfig` field a swept parameter sets (``lambda`` → ``lam``)."""
    name = name.replace("-", "_")
    return ALIASES.get(name, name)


def _flag(param: str) -> str:
    return "--" + param.replace("_", "-")


def _only_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SettingsError(f"{where}: unknown key {shown(unknown[0])}; expected only {', '.join(allowed)}")


def _check_types(table: Mapping[str, Any], types: Mapping[str, tuple[tuple[type, ...], str]], where: str) -> None:
    """Refuse a key of a sweep file whose value has the wrong TOML type (a boolean is not an integer)."""
    for key, value in table.items():
        allowed, expected = types[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise SettingsError(f"{where}: {key} = {shown(value)} is {toml_type(value)}; expected {expected}")


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise SettingsError(f"{where}={shown(name)} is not valid; expected letters, digits, - and _ only")
