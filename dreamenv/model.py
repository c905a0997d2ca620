"""Loading a world model: `load_model(model)` -> `world_model.WorldModel`, ready for the core.

    load_model(None)              the shipped bundle, DEFAULT_MODEL (dreamenv/assets/default)
    load_model("runs/x/bundle")   a bundle folder (validated: `checkpoint.load_bundle`)
    load_model(bundle)            a `checkpoint.Bundle`; a `WorldModel` passes through

Errors: `BundleError` for a missing or bad bundle (naming the path), `TypeError` for anything
else, and `RuntimeError` in a process fork()ed from one that had started JAX (it would deadlock).
"""

from __future__ import annotations

import os
from pathlib import Path

from dreamenv.checkpoint import Bundle, BundleError, load_bundle
from dreamenv.world_model import WorldModel

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"


def _jax_started() -> bool:
    from jax._src import xla_bridge  # no public API tells whether JAX's runtime has started

    return getattr(xla_bridge, "backends_are_initialized", lambda: False)()


_FORKED_FROM_JAX = False


def _note_fork():
    global _FORKED_FROM_JAX
    _FORKED_FROM_JAX = _jax_started()


os.register_at_fork(after_in_child=_note_fork)


def load_model(model=None) -> WorldModel:
    """A bundle folder path, a `Bundle`, a `WorldModel`, or None (the shipped bundle) -> WorldModel."""
    if _FORKED_FROM_JAX:  # JAX's threads did not survive the fork: using it here would deadlock
        raise RuntimeError(
            "this process was fork()ed from one that had already started JAX, so JAX would deadlock "
            "here; start env subprocesses with 'spawn' or 'forkserver': gym.make_vec(..., "
            "vectorization_mode='async', vector_kwargs={'context': 'spawn'}) or "
            "SubprocVecEnv(..., start_method='forkserver')"
        )
    if model is None:
        if not DEFAULT_MODEL.is_dir():
            raise BundleError(
                f"no shipped model bundle at {DEFAULT_MODEL} yet: build one with "
                f"`python -m train.pipeline` and pass model=PATH_TO_BUNDLE (or a Bundle)"
            )
        model = DEFAULT_MODEL
    if isinstance(model, (str, Path)):
        model = load_bundle(model)
    if isinstance(model, Bundle):
        model = WorldModel.from_bundle(model)
    if not isinstance(model, WorldModel):
        raise TypeError(
            f"model is a {type(model).__name__}, expected a bundle folder path, a Bundle or a WorldModel"
        )
    return model
