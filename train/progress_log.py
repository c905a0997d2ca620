"""The learning-curve CSV of a resumable trainer (train.agent, train.controller)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dreamenv.atomic import atomic_write_bytes


def write_progress(path: Path, fields: list[str], rows: list[dict]) -> None:
    """All rows, written atomically (the first field is the progress counter)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_progress(path: Path, fields: list[str], upto: int) -> list[dict]:
    """The rows of earlier runs whose counter (the first field) is <= `upto`, the checkpoint a
    rerun resumes from; [] when there is no file or nothing to resume."""
    if not path.exists() or upto == 0:
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r[fields[0]]) <= upto]
