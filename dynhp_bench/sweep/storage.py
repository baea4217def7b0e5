"""Where a sweep's studies live, who may claim the next point, and how a dead worker is noticed.

Two storages, behind one small interface (`Store`):

* **Journal** (default): Optuna's `JournalStorage` on a file in the results folder (``study.journal``). Every
  process appends operations to one log under a file lock, which suits several processes on one machine; SQLite
  instead locks the whole database per writer and fails with "database is locked" under concurrent writers.
  Optuna's journal has no heartbeat, so a worker holds an OS lock (``flock``) on its own lock file for as long as it
  lives; the kernel drops it the instant the process dies, even by SIGKILL, which tells the others it is gone.
* **PostgreSQL** (``--storage postgresql://…``): Optuna's `RDBStorage`, for workers on many machines. A running
  trial records a heartbeat every few seconds; one silent for three intervals is failed by the next worker to look.

Claims are serialised by a lock shared by every worker of the storage (a file lock beside the journal; a
PostgreSQL advisory lock), held only while a worker picks its next point, so a point is never claimed twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from dynhp_bench.errors import StorageError

JOURNAL_FILE = "study.journal"
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")
# Plain postgresql:// goes through psycopg 3 (the `postgres` extra), whatever SQLAlchemy's default driver is.
DEFAULT_DRIVER = "postgresql+psycopg"
DEFAULT_HEARTBEAT_S = 10
GRACE_HEARTBEATS = 3
CONNECT_TIMEOUT_S = 5
WORKER_ATTR = "worker"
FAILED_ATTR = "failed_because"
URL_HINT = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


@dataclass(frozen=True)
class StorageTarget:
    """A study storage as the user named it: a journal file, or a PostgreSQL URL (kept secret when shown)."""

    journal: Path | None = None
    url: str | None = field(default=None, repr=False)  # holds the password: never in a repr

    @property
    def shown(self) -> str:
        """How to print it: the journal path, or the URL with its password masked."""
        return str(self.journal) if self.journal is not None else mask_url(self.url or "")

    def to_text(self) -> str:
        """The form `parse_storage` reads back (the URL keeps its password: never print this)."""
        return self.url if self.url is not None else str(self.journal)


@dataclass(frozen=True)
class WorkerTag:
    """Who holds a trial: recorded on the trial as user attribute ``worker``."""

    id: str
    host: str
    pid: int

    def as_attr(self) -> dict[str, Any]:
        """The JSON value stored on the trial."""
        return {"id": self.id, "host": self.host, "pid": self.pid}


# Both run in time linear in the text (an error may echo a value of a million characters): a scheme starts only where
# none could have started one character earlier, and a parameter's name (which holds no ? or ;) is at most 64
# characters either side of "password", so that no position starts a scan to the end of the text.
_USERINFO_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.-])(?P<keep>[A-Za-z][A-Za-z0-9+.-]*:/{1,2}[^:/@\s]*:)[^\s/?#]*@")
# libpq and SQLAlchemy take a password as a query parameter too: ?password=…, &sslpassword=…
_QUERY_PASSWORD = re.compile(
    r"(?P<keep>[?&;][^=&#;?\s]{0,64}?(?:password|passwd|pwd)[^=&#;?\s]{0,64}=)[^&#\s]*", re.IGNORECASE
)


def mask_url(text: str) -> str:
    """`text` with every password in it replaced by ``***``: in ``scheme://user:password@host`` and in a query
    parameter such as ``?password=…`` (anywhere in the text, so a URL inside an error message is masked too)."""
    return _QUERY_PASSWORD.sub(r"\g<keep>***", _USERINFO_PASSWORD.sub(r"\g<keep>***@", text))


def parse_storage(text: str | None, results_root: Path) -> StorageTarget:
    """Check a ``--storage`` value without touching anything: none → the journal in the results folder."""
    if text is None:
        return StorageTarget(journal=Path(results_root) / JOURNAL_FILE)
    if "://" not in text:
        return StorageTarget(journal=Path(text).expanduser())
    scheme = text.split("://", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        raise StorageError(
            f"storage {mask_url(text)!r} is not supported; expected a PostgreSQL URL like {URL_HINT} "
            "or a journal file path"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise StorageError(f"storage URL {mask_url(text)!r} is malformed; expected {URL_HINT}") from None
    if not url.host or "@" in url.host:
        hint = " (write @ in a password as %40)" if url.host and "@" in url.host else ""
        raise StorageError(f"storage URL {mask_url(text)!r} names no valid host{hint}; expected {URL_HINT}")
    if not url.database:
        raise StorageError(f"storage URL {mask_url(text)!r} names no database; expected {URL_HINT}")
    if url.port is not None and not 0 < url.port < 65536:
        raise StorageError(f"storage URL {mask_url(text)!r} has port {url.port}; expected 1 to 65535")
    return StorageTarget(url=text)


def engine_url(url: str) -> str:
    """The URL SQLAlchemy connects with: plain ``postgresql://`` names the psycopg 3 driver explicitly."""
    scheme, rest = url.split("://", 1)
    return f"{DEFAULT_DRIVER}://{rest}" if scheme.lower() == "postgresql" else url


def repair_journal(journal: Path) -> str | None:
    """Set aside a damaged tail of a journal (what a full disk or a power loss leaves: a line cut short or garbled),
    keeping every complete line before it; return a one-line note saying so, or None when the journal is whole.

    The tail moves to ``JOURNAL.damaged-TIMESTAMP`` beside the journal, so nothing is lost; the operations it held
    (at most the last one or two) are replayed by the sweep: their trials are claimed again. Optuna's own journal
    lock is held meanwhile, so no process appends while the tail is cut.
    """
    if not journal.is_file():
        return None
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()
    try:
        data = journal.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n") or not _is_json_object(line):
                break
            good += len(line)
        if good == len(data):
            return None
        aside = journal.with_name(f"{journal.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        aside.write_bytes(data[good:])
        with journal.open("r+b") as handle:
            handle.truncate(good)
            os.fsync(handle.fileno())
    except OSError as exc:
        raise StorageError(f"study journal {journal} cannot be repaired: {exc.strerror or exc}") from None
    finally:
        lock.release()
    kept = data[:good].count(b"\n")
    return (
        f"study journal {journal}: its last {len(data) - good} bytes were damaged (a write cut short); kept its "
        f"{kept} complete operations and moved the rest to {aside}"
    )


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def check_storage(target: StorageTarget) -> None:
    """Make sure the storage can be used, writing nothing: the server answers, or the journal is readable."""
    if target.url is not None:
        _check_postgres(target.url)
        return
    assert target.journal is not None
    journal = target.journal
    if journal.exists():
        if not journal.is_file():
            raise StorageError(f"study journal {journal} is not a file; expected a journal written by dynhp-bench")
        try:
            JournalStorage(JournalFileBackend(str(journal))).get_all_studies()
        except Exception as exc:  # Optuna raises several types for a file that is not a journal
            raise StorageError(f"study journal {journal} cannot be read ({exc}); expected an Optuna journal") from None
        if not os.access(journal, os.W_OK):
            raise StorageError(f"study journal {journal} is not writable; expected a file this user can write")
        return
    ancestor = journal.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StorageError(f"cannot create the study journal {journal}: {ancestor} is not a writable folder")


class Store:
    """An Optuna storage plus the claim lock, worker liveness and heartbeats that make claims exactly-once."""

    def __init__(self, storage: BaseStorage, shown: str) -> None:
        self.storage = storage
        self.shown = shown
        self.tag = WorkerTag(uuid.uuid4().hex[:12], socket.gethostname(), os.getpid())

    def claim_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while a worker reaps dead trials and claims its next point."""
        raise NotImplementedError

    def alive(self) -> contextlib.AbstractContextManager[None]:
        """Held for a worker's whole life: while it is held, the worker's trials count as alive."""
        return contextlib.nullcontext()

    def first_heartbeat(self, trial: optuna.Trial) -> None:
        """Called under the claim lock, before the trial is tagged, so a tagged trial always has a heartbeat."""

    def heartbeat(self, trial: optuna.Trial) -> contextlib.AbstractContextManager[None]:
        """Held while a trial trains: keeps it from being taken for dead."""
        return contextlib.nullcontext()

    def reap(self, study: optuna.Study) -> list[int]:
        """Fail the RUNNING trials whose worker is gone (call under the claim lock); return their numbers."""
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            why = self._dead_because(trial)
            if why is not None and self._fail(study, trial, why):
                failed.append(trial.number)
        return failed

    def close(self) -> None:
        """Release connections."""

    def _dead_because(self, trial: FrozenTrial) -> str | None:
        # Claims tag the trial under the claim lock, so an untagged RUNNING trial seen under it lost its worker
        # between the claim and the tag.
        if WORKER_ATTR not in trial.user_attrs:
            return "its worker stopped while claiming it"
        return None

    def _fail(self, study: optuna.Study, trial: FrozenTrial, why: str) -> bool:
        try:  # Optuna has no public way to set another process's trial attribute; the storage call is it
            self.storage.set_trial_user_attr(trial._trial_id, FAILED_ATTR, why)
            study.tell(trial.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return False  # finished meanwhile
        return True


class JournalStore(Store):
    """The default: a journal file, with flock-based worker liveness (one machine)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)  # the command repaired it and said so; this covers a tail damaged since
        super().__init__(JournalStorage(JournalFileBackend(str(path))), str(path))
        self.locks = path.with_name(path.name + ".locks")
        self.locks.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def claim_lock(self) -> Iterator[None]:
        with file_lock(self.locks / "claim.lock"):
            yield

    @contextlib.contextmanager
    def alive(self) -> Iterator[None]:
        path = self._worker_lock(self.tag.id)
        try:
            with file_lock(path):
                yield
        finally:
            path.unlink(missing_ok=True)

    def _worker_lock(self, worker_id: str) -> Path:
        return self.locks / f"worker-{worker_id}.lock"

    def _dead_because(self, trial: FrozenTrial) -> str | None:
        why = super()._dead_because(trial)
        if why is not None:
            return why
        worker = trial.user_attrs[WORKER_ATTR]
        if worker.get("host") != self.tag.host:
            return None  # another machine's lock cannot be seen from here
        path = self._worker_lock(str(worker.get("id")))
        if not _lock_is_free(path):
            return None
        path.unlink(missing_ok=True)
        return f"its worker (pid {worker.get('pid')} on {worker.get('host')}) ended without finishing it"


class PostgresStore(Store):
    """PostgreSQL through Optuna's RDBStorage, with heartbeats and an advisory lock for claims (many machines)."""

    def __init__(self, url: str, *, heartbeat_s: int) -> None:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
        self._engine = sqlalchemy.create_engine(engine_url(url), poolclass=NullPool, connect_args=connect_args)
        self._lock_connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            # Optuna creates its tables when the first RDBStorage opens a fresh database; two processes doing
            # that at once collide in PostgreSQL's catalogue, so opening is serialised across processes.
            with self._advisory_lock(_lock_key(b"dynhp-bench schema")):
                self._rdb = _quietly(
                    RDBStorage,
                    engine_url(url),
                    engine_kwargs={"connect_args": connect_args},
                    heartbeat_interval=heartbeat_s,
                    grace_period=GRACE_HEARTBEATS * heartbeat_s,
                )
        except BaseException:
            self._lock_connection.close()
            self._engine.dispose()
            raise
        # Optuna wraps an RDBStorage in its cache whenever a study uses it; use that same wrapper everywhere.
        super().__init__(optuna.storages.get_storage(self._rdb), mask_url(url))
        self.heartbeat_s = heartbeat_s

    @contextlib.contextmanager
    def _advisory_lock(self, key: int) -> Iterator[None]:
        """A PostgreSQL advisory lock: one holder at a time among all processes using this database."""
        import sqlalchemy

        self._lock_connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            self._lock_connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    def claim_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._advisory_lock(_lock_key(b"dynhp-bench claims"))

    def first_heartbeat(self, trial: optuna.Trial) -> None:
        self._rdb.record_heartbeat(trial._trial_id)  # Optuna exposes no trial id outside optimize()

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        storage, trial_id = self._rdb, trial._trial_id
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(Exception):  # a missed beat only risks the trial being rerun
                    storage.record_heartbeat(trial_id)

        thread = threading.Thread(target=beat, name="dynhp-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def reap(self, study: optuna.Study) -> list[int]:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        _quietly(optuna.storages.fail_stale_trials, study)  # heartbeat older than the grace period → FAIL
        failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running]
        return failed + super().reap(study)

    def close(self) -> None:
        self._lock_connection.close()
        self._engine.dispose()
        self._rdb.remove_session()
        self._rdb.engine.dispose()


def open_store(target: StorageTarget, *, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> Store:
    """Open (creating if needed) the storage `target` names; call `check_storage` first."""
    if target.url is not None:
        try:
            return PostgresStore(target.url, heartbeat_s=heartbeat_s)
        except Exception as exc:  # SQLAlchemy and the driver raise many types; the message is what matters
            raise StorageError(f"cannot open the study storage {target.shown}: {_scrub(exc, target.url)}") from None
    assert target.journal is not None
    try:
        return JournalStore(target.journal)
    except OSError as exc:
        raise StorageError(f"cannot open the study journal {target.journal}: {exc.strerror or exc}") from None


def _lock_key(name: bytes) -> int:
    """A stable 64-bit advisory-lock key for `name`, the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


def _check_postgres(url: str) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(
            engine_url(url), poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )
    except (ImportError, sqlalchemy.exc.NoSuchModuleError):
        raise StorageError(
            f"PostgreSQL storage {mask_url(url)} needs its driver (psycopg); expected it installed: "
            "pip install 'dynhp-bench[postgres]'"
        ) from None
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # the driver's OperationalError and friends
        raise StorageError(
            f"cannot reach the study storage {mask_url(url)}: {_scrub(exc, url)}; "
            "expected a running PostgreSQL server that accepts this user and database"
        ) from None
    finally:
        engine.dispose()


def _scrub(exc: BaseException, url: str) -> str:
    """The first line of an error, with the URL's password removed wherever it appears."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        password = make_url(url).password
        if password:
            text = text.replace(str(password), "***")
    return mask_url(text)


def _quietly(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `func` without Optuna's experimental-feature warnings (heartbeats are a supported use here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return func(*args, **kwargs)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on `path` (created if missing); the kernel releases it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_is_free(path: Path) -> bool:
    try:
        with path.open("r") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return True
    except FileNotFoundError:
        return True
