"""One ``study.ask()`` at a time across all workers of a search, and none once the study has its n_trials.

A worker used to check "is a trial still pending?" and then ask for one; two workers doing that at once both
saw the last free slot and both created a trial, so ``n_trials=4`` on 4 SLURM workers ran 5 trials (seen in CI on
PostgreSQL). The gate makes check-and-ask one step under a lock that every worker of the study shares:

- PostgreSQL: a session advisory lock (``pg_advisory_lock``) keyed by the study name, on its own connection;
- MySQL: ``GET_LOCK`` on the study name;
- sqlite and journal files: an ``flock`` on a file next to the plan (a file store lives on one file system).

The lock also stops two workers from taking the same WAITING (enqueued or retried) trial: ``ask()`` reads it
WAITING then sets it RUNNING, and sqlite ignores the SELECT ... FOR UPDATE that RDBStorage relies on for that.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from olmo.data.cache import file_lock

Lock = Callable[[], contextlib.AbstractContextManager[None]]


class NothingToAsk(Exception):
    """Raised from ``study.ask()`` when the study already has every trial it needs; no trial was created."""


def _file_lock(path: Path) -> Lock:
    return functools.partial(file_lock, path)


def _lock_key(study_name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


def _database_lock(url: str, study_name: str) -> Lock:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, pool_pre_ping=True)
    dialect = engine.dialect.name
    if dialect == "postgresql":
        take = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
        release = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
        params: dict[str, Any] = {"key": _lock_key(study_name)}
    elif dialect in ("mysql", "mariadb"):
        take = sqlalchemy.text("SELECT GET_LOCK(:key, -1)")
        release = sqlalchemy.text("SELECT RELEASE_LOCK(:key)")
        params = {"key": f"optuna-ask-{hashlib.sha256(study_name.encode()).hexdigest()[:40]}"}
    else:
        raise ValueError(f"storage: no cross-worker lock for the {dialect!r} database; allowed: postgresql, "
                         "mysql, sqlite, journal:<file>")

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        # A fresh connection per ask: a lock held by a connection dies with it, so a killed worker frees it.
        with engine.connect() as conn:
            conn.execute(take, params)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(release, params)
                conn.commit()

    return hold


def lock_for(storage_url: str, study_name: str, lock_file: Path) -> Lock:
    """The lock every worker of this study shares: a file lock for file stores, a database lock otherwise."""
    if storage_url.startswith(("sqlite:", "journal:")):
        return _file_lock(lock_file)
    return _database_lock(storage_url, study_name)


def gate_asks(study: Any, lock: Lock, pending: Callable[[Any], int]) -> None:
    """Make ``study.ask()`` (which ``study.optimize`` calls) check ``pending(study) > 0`` and ask under ``lock``.

    With nothing pending it raises NothingToAsk before creating a trial; ``study.optimize`` lets that through,
    since Optuna calls ``ask()`` outside the objective's try.
    """
    ask = study.ask

    def gated_ask(*args: Any, **kwargs: Any) -> Any:
        with lock():
            if pending(study) <= 0:
                raise NothingToAsk
            return ask(*args, **kwargs)

    study.ask = gated_ask
