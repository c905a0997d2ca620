"""The held-out split of rollouts, shared by every training stage.

Whole rollouts (never single frames) are held out, so held-out frames come from episodes the
model never saw. A rollout's side depends only on its file name and the seed (a hash), so the
VAE, the encoder and the MDN-RNN agree, and adding rollouts never moves existing ones.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def holdout_score(name: str, seed: int = 0) -> float:
    """A file name's uniform pseudo-random number in [0, 1) (sha256 of seed and name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_rollouts(
    paths: list[str | os.PathLike], holdout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """-> (train, held-out) paths, each sorted; a path is held out when its score < fraction.

    With a positive fraction and at least two rollouts, both sides are non-empty (the lowest
    score is held out, the highest trained on, when hashing alone would leave a side empty).
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    paths = sorted(Path(p) for p in paths)
    scores = {p: holdout_score(p.name, seed) for p in paths}
    held = {p for p in paths if scores[p] < holdout_fraction}
    if holdout_fraction > 0 and len(paths) >= 2:
        ranked = sorted(paths, key=scores.get)
        if not held:
            held = {ranked[0]}
        if len(held) == len(paths):
            held.discard(ranked[-1])
    return [p for p in paths if p not in held], [p for p in paths if p in held]
