"""Checkpoints: a run's full state at an epoch boundary, written atomically, read back safely.

A checkpoint holds the pruned shapes and weights, the gates, Adam's state, the random generators'
states, the batch size, the input pixels still fed, and the epoch records so far: everything needed
for a resumed run to continue exactly as the uninterrupted one would have (on the CPU).

It is written with `torch.save` through a temporary file, fsynced, then renamed over the previous
one, so a kill at any moment leaves the last good checkpoint intact. It is read with
``torch.load(weights_only=True)``, which unpickles nothing but tensors and plain containers: a
tampered or foreign file is a one-line error naming it, never code execution.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dynhp_bench.errors import ResultsError

FORMAT = "dynhp-bench-checkpoint"
VERSION = 2  # 2: masks, validation losses and two record columns (nonzero_params, validation_loss)
REQUIRED_KEYS = ("format", "version", "run_id", "epoch", "trainer", "records")


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the user's umask. `mkstemp` makes its files 0o600, which
    would keep results from the people a shared results folder is shared with."""
    umask = os.umask(0o077)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    document = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            torch.save(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ResultsError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint is intact"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path, *, run_id: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a ResultsError naming the file."""
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResultsError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # unpickling refuses many things, each with its own exception type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"checkpoint {path} is not a readable dynhp-bench checkpoint ({reason[:160]})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ResultsError(f"checkpoint {path} is not a dynhp-bench checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise ResultsError(f"checkpoint {path} lacks {', '.join(missing)}; expected {', '.join(REQUIRED_KEYS)}")
    if document["version"] != VERSION:
        raise ResultsError(
            f"checkpoint {path} has format version {document['version']!r}, written by an older dynhp-bench; "
            f"expected version {VERSION} (train the run again with --force)"
        )
    if run_id is not None and document["run_id"] != run_id:
        raise ResultsError(f"checkpoint {path} belongs to run {document['run_id']!r}, not {run_id!r}")
    return document
