"""`dynhp-bench check`: results against a committed baseline, as a CI gate.

A baseline (JSON, committed under `results/`) holds, per configuration, the final error (percentage
points), the model size (MB) and the training memory (MB) with the tolerance each may worsen by.
Only a worsening beyond its tolerance fails; an improvement passes (and is shown). A configuration of
the baseline with no results fails too: a gate that silently skips what it cannot see guards nothing.

Default tolerances are wide enough for seed noise: the error may rise by max(1.0 pp, 3 × the
baseline's standard deviation over its seeds), the model size and training memory by
max(5%, 3 × their relative standard deviation). A baseline file may set its own per configuration.
An empty baseline, or one with a missing or non-finite number, is an error, not a pass; a NaN measured fails.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from dynhp_bench import __version__
from dynhp_bench.analysis.report import CONFIG_KEY, EXTRA_KEY, configurations
from dynhp_bench.errors import ResultsError
from dynhp_bench.training.run_folder import read_json, write_json_atomic

FORMAT = "dynhp-bench-baseline"
VERSION = 1
DEFAULT_ERROR_PP = 1.0
DEFAULT_RELATIVE = 0.05
SIGMAS = 3.0
# metric in the results → (baseline field, kind of tolerance)
CHECKED = {
    "final_error_pct": ("error_pp", "absolute"),
    "model_size_mb": ("model_size_rel", "relative"),
    "training_memory_mb": ("training_memory_rel", "relative"),
}


def config_name(key: dict[str, Any]) -> str:
    """A readable name for a configuration key."""
    parts = [str(key["dataset"]), str(key["strategy"]), f"b{key['batch_size']}"]
    if key.get("alpha_bs") is not None:
        parts.append(f"a{key['alpha_bs']:g}")
    if key.get("prune_schedule") is not None:
        parts.append(str(key["prune_schedule"]))
    parts += [str(key["profile"]), f"e{key['epochs']}"]
    return "-".join(parts)


def _key(row: pd.Series) -> dict[str, Any]:
    key = {}
    for name in CONFIG_KEY:
        value = row[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            key[name] = None
        elif name in ("batch_size", "epochs", "subset"):
            key[name] = int(value)
        elif name in ("alpha_bs", "lam", "gamma"):
            key[name] = float(value)
        else:
            key[name] = str(value)
    for name in EXTRA_KEY:  # only where set (DyPrune's), so other configurations' keys stay as they were
        value = row.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            key[name] = value.item() if hasattr(value, "item") else value
    return key


def make_baseline(runs: pd.DataFrame) -> dict[str, Any]:
    """A baseline document from results: every configuration's means, spreads and default tolerances."""
    entries = []
    for _, row in configurations(runs).iterrows():
        tolerances = {
            "error_pp": max(DEFAULT_ERROR_PP, SIGMAS * float(row["final_error_pct_std"])),
            "model_size_rel": max(DEFAULT_RELATIVE, SIGMAS * _relative(row["model_size_mb_std"], row["model_size_mb"])),
            "training_memory_rel": max(
                DEFAULT_RELATIVE, SIGMAS * _relative(row["training_memory_mb_std"], row["training_memory_mb"])
            ),
        }
        entries.append(
            {
                "name": config_name(_key(row)),
                "key": _key(row),
                "seeds": int(row["seeds"]),
                **{metric: float(row[metric]) for metric in CHECKED},
                **{f"{metric}_std": float(row[f"{metric}_std"]) for metric in CHECKED},
                "tolerance": tolerances,
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dynhp_bench": __version__,
        "configurations": entries,
    }


def _relative(std: float, mean: float) -> float:
    return float(std) / float(mean) if mean else 0.0


def read_baseline(path: Path) -> dict[str, Any]:
    """Read and check a baseline file: at least one configuration, each with a name, a key, finite metrics and
    finite tolerances ≥ 0. Anything else is a ResultsError naming the file: a gate that checks nothing, or checks
    against NaN (which every comparison passes), guards nothing."""
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != VERSION:
        raise ResultsError(f"{path} is not a dynhp-bench baseline (format {FORMAT!r}, version {VERSION})")
    entries = document.get("configurations")
    if not isinstance(entries, list) or not entries:
        raise ResultsError(
            f"{path} holds no configurations; expected at least one (write one with `dynhp-bench check --update`)"
        )
    for index, entry in enumerate(entries, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"{path}: configuration {index}" + (f" ({name!r})" if isinstance(name, str) else "")
        if not isinstance(entry, dict):
            raise ResultsError(f"{where} is not an object; expected name, key, tolerance and {', '.join(CHECKED)}")
        missing = [f for f in ("name", "key", "tolerance", *CHECKED) if f not in entry]
        if missing:
            raise ResultsError(f"{where} lacks {', '.join(missing)}")
        if not isinstance(name, str) or not isinstance(entry["key"], dict) or not isinstance(entry["tolerance"], dict):
            raise ResultsError(f"{where}: name must be a string, key and tolerance objects")
        key_missing = [k for k in CONFIG_KEY if k not in entry["key"]]
        if key_missing:
            raise ResultsError(f"{where}: its key lacks {', '.join(key_missing)}")
        alpha = entry["key"]["alpha_bs"]
        if alpha is not None and not _finite(alpha):
            raise ResultsError(f"{where}: key alpha_bs={alpha!r}; expected a number or null")
        for metric, (tolerance_name, _) in CHECKED.items():
            if not _finite(entry[metric]) or entry[metric] < 0:
                raise ResultsError(f"{where}: {metric}={entry[metric]!r}; expected a finite number ≥ 0")
            tolerance = entry["tolerance"].get(tolerance_name)
            if not _finite(tolerance) or tolerance < 0:
                raise ResultsError(f"{where}: tolerance {tolerance_name}={tolerance!r}; expected a finite number ≥ 0")
    return document


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Verdict:
    """One metric of one configuration, compared."""

    configuration: str
    metric: str
    baseline: float
    measured: float | None
    allowed: float
    status: str  # "pass", "improved", "regressed", "missing"

    @property
    def failed(self) -> bool:
        """Whether this verdict fails the gate."""
        return self.status in ("regressed", "missing")


def compare(baseline: dict[str, Any], runs: pd.DataFrame) -> list[Verdict]:
    """Every baseline configuration's metrics against the results' configurations."""
    configs = configurations(runs)
    found = {config_name(_key(row)): row for _, row in configs.iterrows()}
    verdicts = []
    for entry in baseline["configurations"]:
        row = found.get(config_name(entry["key"]))
        for metric, (tolerance_name, kind) in CHECKED.items():
            base = float(entry[metric])
            tolerance = float(entry["tolerance"][tolerance_name])
            allowed = base + tolerance if kind == "absolute" else base * (1 + tolerance)
            if row is None:
                verdicts.append(Verdict(entry["name"], metric, base, None, allowed, "missing"))
                continue
            measured = float(row[metric])
            if not math.isfinite(measured) or measured > allowed + 1e-12:  # NaN would pass every comparison
                status = "regressed"
            else:
                status = "improved" if measured < base - 1e-12 else "pass"
            verdicts.append(Verdict(entry["name"], metric, base, measured, allowed, status))
    return verdicts


def junit_xml(verdicts: list[Verdict], path: Path) -> None:
    """Write the verdicts as a JUnit XML report (one test case per configuration and metric)."""
    suite = ET.Element(
        "testsuite",
        name="dynhp-bench check",
        tests=str(len(verdicts)),
        failures=str(sum(v.failed for v in verdicts)),
    )
    for verdict in verdicts:
        case = ET.SubElement(suite, "testcase", classname=verdict.configuration, name=verdict.metric)
        if verdict.failed:
            measured = "no results" if verdict.measured is None else f"{verdict.measured:.4f}"
            failure = ET.SubElement(case, "failure", message=f"{verdict.status}: {measured} > {verdict.allowed:.4f}")
            failure.text = f"baseline {verdict.baseline:.4f}, allowed up to {verdict.allowed:.4f}, measured {measured}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_baseline(path: Path, runs: pd.DataFrame) -> dict[str, Any]:
    """Write a new baseline from results (atomically) and return it."""
    document = make_baseline(runs)
    write_json_atomic(path, document)
    return document
