"""Raw connections to the SQLite files tests make or damage, closed when the block ends.

A plain ``sqlite3.connect(path)`` used as a context manager commits but leaves the connection
open; Python 3.13 warns about such a connection when it is collected, and the suite turns
warnings into errors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def sqlite_file(path: str | Path, **options: Any) -> Iterator[sqlite3.Connection]:
    """A connection to ``path``: committed when the block succeeds, closed either way."""
    with closing(sqlite3.connect(path, **options)) as db, db:
        yield db
