"""Which code made something: this checkout's git commit and whether its tracked files differ from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_state() -> dict:
    """{"git_commit": HEAD or "unknown", "git_uncommitted_changes": bool, or None outside a checkout}."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or "unknown", "git_uncommitted_changes": None if changes is None else bool(changes)}
