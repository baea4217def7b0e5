"""Run folders: `<results>/runs/<run_id>/` with config.json, epochs.csv, summary.json and a marker.

* `config.json`: every resolved setting, the runtime (device, threads, data folder) and versions;
* `epochs.csv`: one row per epoch, appended and flushed as each epoch ends (a crash keeps what ended); a
  published folder (`publish_run`) holds it compressed, as `epochs.csv.gz`, and is read alike;
* `summary.json`: the run's headline numbers, written when it ends;
* `checkpoint.pt`: the state at an epoch boundary, to resume from (see `checkpoint.py`);
* `model.safetensors`, `model.onnx`, `inference.json`: the exported final network and its measured
  inference speed, when `export` / `bench --inference` were run on it (see `export.py`);
* `INTERRUPTED`: present while the run is stopped by a signal (which, when, at which epoch);
* `COMPLETE`: written last; a folder without it is an unfinished run, never read as a result;
* `.lock`: flocked by the one process that trains the run (`train` or a sweep worker), naming it (pid, host).

JSON files and checkpoints are written atomically (temporary file, fsync, rename), so no reader sees
half a file. epochs.csv is appended a flushed row at a time, and rewritten atomically on resume.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import io
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dynhp_bench.errors import ResultsError, SettingsError
from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.checkpoint import load_checkpoint, new_file_mode, save_checkpoint
from dynhp_bench.training.record import EpochRecord

RUNS_DIR = "runs"
CONFIG_FILE = "config.json"
EPOCHS_FILE = "epochs.csv"
PUBLISHED_EPOCHS_FILE = "epochs.csv.gz"
# What a published run folder keeps (`publish_run`): the results, never the checkpoint, lock or exported model.
PUBLISHED_FILES = ("config.json", "summary.json", "inference.json", "COMPLETE")
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
INFERENCE_FILE = "inference.json"
INTERRUPTED_MARKER = "INTERRUPTED"
COMPLETE_MARKER = "COMPLETE"
LOCK_FILE = ".lock"


def run_path(results_root: Path, run_id: str) -> Path:
    """The folder of run `run_id` under a results root."""
    return Path(results_root) / RUNS_DIR / run_id


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsynced, then renamed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, new_file_mode())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Write a set of files all or nothing: they are written into a temporary folder beside `final`, yielded here,
    and moved into `final` (each by an atomic rename) only once the block ends without an error; after an error
    `final` is as it was. Files already in `final` that the block did not write are left alone."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name or 'out'}.", suffix=".tmp"))
    except OSError as exc:
        raise ResultsError(f"cannot write {final}: {exc.strerror or exc}") from None
    try:
        yield stage
        try:
            final.mkdir(parents=True, exist_ok=True)
            for path in sorted(stage.iterdir()):
                os.replace(path, final / path.name)
        except OSError as exc:
            raise ResultsError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def read_json(path: Path) -> Any:
    """Read a JSON file written by this module; a missing or broken one is a ResultsError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ResultsError(f"cannot read {path}: it nests arrays or objects too deeply") from None


class RunFolder:
    """One run's folder: created by `start`, grown by `append_epoch`, closed by `finish`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def is_complete(self) -> bool:
        """Whether the run finished (its completion marker exists)."""
        return (self.path / COMPLETE_MARKER).is_file()

    def has_result(self) -> bool:
        """Whether the run is complete and its summary.json is readable: what a sweep counts as a point done."""
        if not self.is_complete:
            return False
        try:
            summary = self.read_summary()
        except ResultsError:
            return False
        return isinstance(summary, dict) and summary.get("status") == "complete"

    @contextlib.contextmanager
    def writer_lock(self, *, wait: bool) -> Iterator[None]:
        """Held by the one process that trains this run; `wait` blocks until it is free, else another holder is a
        ResultsError naming it (pid and host). Temporary files a killed writer left are removed once it is held."""
        lock_path = self.path / LOCK_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = lock_path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise ResultsError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ResultsError(
                    f"run folder {self.path} is being trained by {holder}; expected one writer per run: "
                    "wait for it to end, then run the same command again"
                ) from None
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
                self.remove_temporary_files()
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def remove_temporary_files(self) -> list[Path]:
        """Remove the ``.*.tmp`` files an atomic write killed midway left behind (call holding the writer lock)."""
        removed = []
        with contextlib.suppress(OSError):
            for path in self.path.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    @property
    def checkpoint_path(self) -> Path:
        """Where the run's checkpoint lives."""
        return self.path / CHECKPOINT_FILE

    @property
    def is_interrupted(self) -> bool:
        """Whether the run was stopped by a signal and not resumed since."""
        return (self.path / INTERRUPTED_MARKER).is_file()

    def start(self, config_document: dict[str, Any]) -> None:
        """Create the folder afresh: earlier files of an unfinished run are removed first (not the writer lock)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for child in self.path.iterdir():
                if child.name == LOCK_FILE:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        except OSError as exc:
            raise ResultsError(f"cannot create run folder {self.path}: {exc.strerror or exc}") from None
        write_json_atomic(self.path / CONFIG_FILE, config_document)
        self._write_csv_row(EpochRecord.columns(), mode="w")

    def resume(self, records: Sequence[EpochRecord]) -> None:
        """Continue an unfinished run: epochs.csv is rewritten atomically to exactly the checkpoint's rows
        (rows of epochs trained after the checkpoint are dropped: they will be trained again)."""
        self._remove(COMPLETE_MARKER)  # a complete run whose summary is unreadable is finished again
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EpochRecord.columns())
        for record in records:
            writer.writerow(["" if v is None else v for v in record.row()])
        write_text_atomic(self.path / EPOCHS_FILE, buffer.getvalue())
        self._remove(INTERRUPTED_MARKER)

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically."""
        save_checkpoint(self.checkpoint_path, state)

    def read_checkpoint(self, run_id: str) -> dict[str, Any]:
        """The checkpoint, checked to belong to `run_id`."""
        return load_checkpoint(self.checkpoint_path, run_id=run_id)

    def mark_interrupted(self, *, signal_name: str, epochs_done: int) -> None:
        """Record that a signal stopped the run after `epochs_done` epochs (the checkpoint holds them)."""
        write_json_atomic(self.path / INTERRUPTED_MARKER, {"signal": signal_name, "epochs_done": epochs_done})

    def append_epoch(self, record: EpochRecord) -> None:
        """Append one epoch's row to epochs.csv and flush it to disk."""
        self._write_csv_row(record.row(), mode="a")

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json, then the completion marker (last, so its presence means all is there)."""
        write_json_atomic(self.path / SUMMARY_FILE, summary)
        self._remove(INTERRUPTED_MARKER)
        try:
            (self.path / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        except OSError as exc:
            raise ResultsError(f"cannot write {self.path / COMPLETE_MARKER}: {exc.strerror or exc}") from None

    def read_config(self) -> dict[str, Any]:
        """The run's config.json."""
        return read_json(self.path / CONFIG_FILE)

    def read_settings(self) -> TrainConfig:
        """The run's settings, from config.json; a damaged file is a ResultsError naming it."""
        path = self.path / CONFIG_FILE
        document = self.read_config()
        try:
            return TrainConfig.from_dict(document["settings"])
        except (KeyError, TypeError, ValueError, AttributeError, SettingsError) as exc:
            raise ResultsError(
                f"{path} is damaged ({type(exc).__name__}: {exc}); expected the config.json `dynhp-bench train` writes"
            ) from None

    def read_summary(self) -> dict[str, Any]:
        """The run's summary.json."""
        return read_json(self.path / SUMMARY_FILE)

    @property
    def is_published(self) -> bool:
        """Whether the folder is a complete run in the published form `publish_run` writes (no checkpoint, no plain
        epochs.csv)."""
        return (
            self.has_result()
            and (self.path / PUBLISHED_EPOCHS_FILE).is_file()
            and not (self.path / EPOCHS_FILE).exists()
            and not self.checkpoint_path.exists()
        )

    @property
    def epochs_path(self) -> Path:
        """The run's epochs.csv, or its compressed copy in a published folder (`publish_run`)."""
        plain = self.path / EPOCHS_FILE
        published = self.path / PUBLISHED_EPOCHS_FILE
        return published if not plain.is_file() and published.is_file() else plain

    def read_epochs(self) -> pd.DataFrame:
        """The run's epochs.csv (or epochs.csv.gz) as a DataFrame."""
        path = self.epochs_path
        try:
            return pd.read_csv(path)
        except (OSError, ValueError, EOFError) as exc:
            raise ResultsError(f"cannot read {path}: {exc}") from None

    def _remove(self, name: str) -> None:
        try:
            (self.path / name).unlink(missing_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot remove {self.path / name}: {exc.strerror or exc}") from None

    def _write_csv_row(self, row: list[object], *, mode: str) -> None:
        target = self.path / EPOCHS_FILE
        try:
            with target.open(mode, newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(["" if v is None else v for v in row])
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise ResultsError(f"cannot write {target}: {exc.strerror or exc}") from None


def complete_runs(results_root: Path) -> Iterator[RunFolder]:
    """Every finished run under a results root, in name order."""
    runs = Path(results_root) / RUNS_DIR
    if runs.is_dir():
        for path in sorted(p for p in runs.iterdir() if p.is_dir()):
            folder = RunFolder(path)
            if folder.is_complete:
                yield folder


def publish_run(folder: RunFolder, results_root: Path) -> Path:
    """Copy a complete run into `results_root` as a folder meant for git: config.json, summary.json, the completion
    marker (and inference.json where `bench --inference` wrote one), with epochs.csv compressed to epochs.csv.gz
    (byte-stable: no timestamp or name in the gzip header). The checkpoint, the writer lock and exported models stay
    behind. The copy is written beside its place and renamed into it, so a reader never sees half a run; `results_root`
    may be the folder's own root (published in place)."""
    if not folder.has_result():
        raise ResultsError(f"{folder.path} is not a complete run; expected a run folder with its {COMPLETE_MARKER}")
    target = Path(results_root) / RUNS_DIR / folder.path.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            umask = os.umask(0)
            os.umask(umask)
            stage.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the published folder private
            for name in PUBLISHED_FILES:
                if (folder.path / name).is_file():
                    shutil.copyfile(folder.path / name, stage / name)
            data = folder.epochs_path.read_bytes()
            if folder.epochs_path.name == EPOCHS_FILE:
                data = gzip.compress(data, compresslevel=9, mtime=0)
            (stage / PUBLISHED_EPOCHS_FILE).write_bytes(data)
            if target.exists():
                shutil.rmtree(target)
            os.replace(stage, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        raise ResultsError(f"cannot publish {folder.path} into {results_root}: {exc.strerror or exc}") from None
    return target
