"""Resumable training checkpoints: one msgpack file per save, written atomically.

A state is a dict pytree, e.g. {"params", "opt_state", "step": int, "key": uint32 key data,
"data": the data order's state}. `save` writes `<folder>/ckpt_<step>.msgpack` (temp file +
rename) and keeps the newest `keep` files. `restore` needs a template of the same structure
(a freshly initialized state) and returns the newest checkpoint that decodes; a damaged newest
file is reported and the one before it is used, so the last good state is never lost.
Trainers never save a non-finite state: that is how a NaN run keeps its last good checkpoint.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from dreamenv.atomic import atomic_write_bytes

_NAME = re.compile(r"^ckpt_(\d+)\.msgpack$")


class TrainCheckpoint:
    """The checkpoints of one training run, in `folder`."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"TrainCheckpoint keep must be at least 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps of the checkpoint files present, oldest first."""
        if not self.folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.folder / f"ckpt_{step:09d}.msgpack"

    def save(self, state: dict) -> Path:
        """Write `state` (with an int "step") atomically, then drop all but the newest `keep`."""
        step = int(state["step"])
        path = atomic_write_bytes(self.path(step), serialization.to_bytes(jax.device_get(state)))
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def restore(self, template: dict) -> dict | None:
        """The newest decodable checkpoint (numpy leaves), or None if there is none.

        Raises ValueError naming the file when it does not fit `template` (another model)."""
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                raw = serialization.msgpack_restore(path.read_bytes())
            except ValueError as err:  # msgpack's errors for truncated or garbled bytes
                print(f"{path}: unreadable checkpoint ({err}); trying an older one", file=sys.stderr)
                continue
            try:
                state = serialization.from_state_dict(template, raw)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}: checkpoint does not fit this run's state ({err}); "
                                 f"use another output folder") from err
            check_shapes(template, state, path)
            return state
        return None


def check_shapes(template: Any, state: Any, path: Path) -> None:
    """Raise ValueError naming `path` when an array's shape differs from the template's."""
    want = jax.tree_util.tree_leaves_with_path(template)
    got = jax.tree_util.tree_leaves(state)
    for (where, a), b in zip(want, got):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"{path}: {jax.tree_util.keystr(where)} has shape {np.shape(b)}, expected "
                f"{np.shape(a)} (saved from a different model)"
            )
