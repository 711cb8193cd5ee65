"""A small SQLite registry of datasets, runs and jobs.

Every dataset creation and training run records one entry through
`Registry.recording`, whoever starts it (the CLI, a pipeline, the Python
API); the web UI adds its jobs. The database lives at
`$VISPIPE_HOME/registry.db` (`~/.vispipe` by default).

Example:

```python
reg = Registry.open()
with reg.recording("dataset", "mnist", "datasets/mnist", {"size": 28}) as entry:
    info = create_dataset(config)
    entry.summary = {"images": 70000}   # "completed"; an error: "failed"; Ctrl-C: "interrupted"
print(reg.list("dataset"))
reg.delete(entry.id)
```
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["KINDS", "STATUSES", "Entry", "Recording", "Registry", "default_path"]

_log = logging.getLogger(__name__)

KINDS = ("dataset", "run", "job")
STATUSES = ("running", "completed", "failed", "interrupted", "aborted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    finished TEXT,
    params TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_kind ON entries(kind, created);
"""


def default_path() -> str:
    """`$VISPIPE_HOME/registry.db`, with `VISPIPE_HOME` defaulting to ~/.vispipe."""
    home = os.environ.get("VISPIPE_HOME") or os.path.join(
        os.path.expanduser("~"), ".vispipe"
    )
    return os.path.join(home, "registry.db")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    """One registry row."""

    id: int
    kind: str
    name: str
    path: str
    status: str
    created: str
    finished: str | None
    params: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class Recording:
    """The entry a `Registry.recording` block keeps.

    Attributes:
        id: The entry's id (None when a best-effort registry could not add it).
        summary: Recorded when the block ends; set it before leaving it.
    """

    id: int | None
    summary: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Datasets, runs and jobs in one SQLite file (safe across processes)."""

    def __init__(self, connection: sqlite3.Connection, path: str):
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: str | None = None) -> "Registry":
        """Opens (creating if needed) the registry at `path` or the default."""
        path = path or default_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        connection = sqlite3.connect(path, timeout=30, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        return cls(connection, path)

    def close(self) -> None:
        self._db.close()

    def add(self, kind: str, name: str, path: str, params: dict[str, Any]) -> int:
        """Adds a `running` entry and returns its id."""
        if kind not in KINDS:
            raise ValueError(f"Registry kind must be one of {KINDS}, got {kind!r}.")
        cursor = self._db.execute(
            "INSERT INTO entries (kind, name, path, status, created, params, summary)"
            " VALUES (?, ?, ?, 'running', ?, ?, '{}')",
            (kind, name, os.path.abspath(path), _now(), json.dumps(params, default=str)),
        )
        return int(cursor.lastrowid)

    def finish(self, entry_id: int, status: str, summary: dict[str, Any]) -> None:
        """Marks an entry finished with `status` and a result summary."""
        if status not in STATUSES:
            raise ValueError(f"Registry status must be one of {STATUSES}, got {status!r}.")
        self._db.execute(
            "UPDATE entries SET status = ?, finished = ?, summary = ? WHERE id = ?",
            (status, _now(), json.dumps(summary, default=str), entry_id),
        )

    @contextlib.contextmanager
    def recording(self, kind: str, name: str, path: str, params: dict[str, Any], *,
                  entry_id: int | None = None, best_effort: bool = False) -> Iterator[Recording]:
        """Records the work of the block as one entry.

        The entry is "running" during the block, then "completed" with
        `entry.summary`, "interrupted" on Ctrl-C or SIGTERM, or "failed" with
        the error; the block's exception propagates.

        Args:
            kind, name, path, params: The entry (see `add`).
            entry_id: Continue this entry (a resumed run) instead of adding one.
            best_effort: Log registry errors instead of raising them, so that
                bookkeeping never fails the work (training).

        Example:

        ```python
        with Registry.open().recording("run", "lenet", "runs/lenet", {}) as entry:
            entry.summary = {"best_val_accuracy": 0.99}
        ```
        """
        if entry_id is None:
            entry_id = self._guarded(best_effort, lambda: self.add(kind, name, path, params))
        else:
            self._guarded(best_effort, lambda: self._set_running(entry_id))
        entry = Recording(entry_id)
        try:
            yield entry
        except KeyboardInterrupt:
            self._finish_entry(entry, "interrupted", entry.summary, best_effort)
            raise
        except BaseException as error:
            self._finish_entry(entry, "failed", {**entry.summary, "error": str(error)},
                               best_effort)
            raise
        self._finish_entry(entry, "completed", entry.summary, best_effort)

    def _finish_entry(self, entry: Recording, status: str, summary: dict[str, Any],
                      best_effort: bool) -> None:
        if entry.id is not None:
            self._guarded(best_effort, lambda: self.finish(entry.id, status, summary))

    def _guarded(self, best_effort: bool, write: Callable[[], Any]) -> Any:
        try:
            return write()
        except sqlite3.Error as error:
            if not best_effort:
                raise
            _log.warning("Registry %s not updated: %s", self.path, error)
            return None

    def _set_running(self, entry_id: int) -> None:
        self._db.execute("UPDATE entries SET status = 'running', finished = NULL WHERE id = ?",
                         (entry_id,))

    def get(self, entry_id: int) -> Entry:
        """The entry with this id; `KeyError` if there is none."""
        row = self._db.execute(
            "SELECT * FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"No registry entry with id {entry_id} in {self.path}.")
        return _to_entry(row)

    def delete(self, entry_id: int) -> Entry:
        """Removes the entry with this id and returns it; `KeyError` if there is none.

        Only the row goes: the folder it names is the caller's to remove.
        """
        entry = self.get(entry_id)
        self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        return entry

    def list(self, kind: str | None = None) -> list[Entry]:
        """Entries, newest first, optionally of one kind."""
        if kind is None:
            rows = self._db.execute("SELECT * FROM entries ORDER BY id DESC")
        else:
            rows = self._db.execute(
                "SELECT * FROM entries WHERE kind = ? ORDER BY id DESC", (kind,)
            )
        return [_to_entry(row) for row in rows.fetchall()]


def _to_entry(row: tuple) -> Entry:
    entry_id, kind, name, path, status, created, finished, params, summary = row
    return Entry(
        entry_id, kind, name, path, status, created, finished,
        json.loads(params), json.loads(summary),
    )
