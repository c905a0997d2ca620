"""Real rollouts for the fidelity benchmark: a shard folder -> start points, encoded latents, frames.

    paths, split = select_shards(folder, heldout_of)
    real = load_real(model, paths, horizon, starts, seed, frame_horizons, video_starts)

Only the frames the benchmark compares are kept in memory (a rollout's frames are 12 MB).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from dreamenv import world_model as wm
from dreamenv.shards import FRAME_SHAPE, ShardError, list_shards, load_shard
from train.policies import episode_policy
from train.split import split_rollouts

CHUNK = 64  # frames per encode / decode / image-metric call


@dataclasses.dataclass
class RealSet:
    """R rollouts (every selected shard, zero-padded to the longest) and N start points in them."""

    files: list[str]  # [R] shard file names
    policies: list[str]  # [R] the policy that drove each (train.policies.episode_policy)
    z: np.ndarray  # [R, T, D] encoded latents (the VAE mean)
    action: np.ndarray  # [R, T, 3]
    reward: np.ndarray  # [R, T]
    terminated: np.ndarray  # [R, T] bool
    length: np.ndarray  # [R] int
    start_rollout: np.ndarray  # [N] int: index into the R rollouts
    start_t: np.ndarray  # [N] int: s, with s + horizon <= length - 1
    frames_grid: np.ndarray  # [N, G, 64, 64, 3] real frames s + h for h in the frame horizons
    video_index: np.ndarray  # [V] int: the starts shown in the video (one per rollout)
    frames_video: np.ndarray  # [V, horizon + 1, 64, 64, 3] real frames s … s + horizon

    @property
    def valid(self) -> np.ndarray:
        """[R, T] bool: steps inside their rollout."""
        return np.arange(self.z.shape[1])[None, :] < self.length[:, None]

    @property
    def mean_latent(self) -> np.ndarray:
        """[D] the mean latent of every step: the data-mean baseline."""
        return self.z[self.valid].mean(0)


def select_shards(folder: str | Path, heldout_of: str | Path | None = None) -> tuple[list[Path], str]:
    """The shards of `folder`, or only those held out by the VAE run `heldout_of`. -> (paths, split)"""
    paths = list_shards(folder)
    if not paths:
        raise FileNotFoundError(f"shard folder {folder} holds no rollout_*.npz shards; collect some with "
                                f"`python -m train.collect --episodes 8 --seed 1 --out {folder}`")
    if heldout_of is None:
        return paths, f"all {len(paths)} shards of {folder}"
    config_path = Path(heldout_of) / "run_config.json"
    try:
        config = json.loads(config_path.read_text())
        holdout, seed = float(config["holdout"]), int(config["seed"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: cannot read the held-out split's 'holdout' and 'seed' ({err})") from err
    _, held = split_rollouts(paths, holdout, seed)
    if not held:
        raise ValueError(
            f"the split of {config_path} (holdout {holdout}) holds out none of the {len(paths)} shards in {folder}"
        )
    split = f"{len(held)} of {len(paths)} shards of {folder}, held out by {config_path} (holdout {holdout}, seed {seed})"
    return held, split


def shard_length(path: Path) -> int:
    """A shard's number of steps, read without decompressing its frames."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            fields, steps = sorted(npz.files), len(npz["reward"])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError):
        return len(load_shard(path)["action"])  # raises a ShardError naming the file
    if "obs" not in fields:
        raise ShardError(
            f"{path}: holds no 'obs' frames (fields {fields}); --shards must be a folder of rollout "
            f"shards (frames), not of encoded latents"
        )
    return steps


def choose_starts(lengths: list[int], horizon: int, starts: int, seed: int):
    """N start points spread round-robin over up to N rollouts long enough for the horizon.

    -> (rollouts used [R] (indices into lengths, sorted), start_rollout [N] (into the R), start_t [N])
    """
    eligible = [i for i, n in enumerate(lengths) if n >= horizon + 1]
    if not eligible:
        return None
    rng = np.random.default_rng(seed)
    used = np.sort(rng.permutation(eligible)[: min(starts, len(eligible))])
    start_rollout = np.arange(starts) % len(used)
    start_t = np.array([rng.integers(0, lengths[used[r]] - horizon) for r in start_rollout])
    order = np.lexsort((start_t, start_rollout))
    return used, start_rollout[order], start_t[order]


def chunked(fn, *arrays):
    """fn over the leading axis of same-length arrays in zero-padded chunks of CHUNK (one
    compiled shape); the outputs are concatenated."""
    out = []
    for lo in range(0, len(arrays[0]), CHUNK):
        parts = [a[lo : lo + CHUNK] for a in arrays]
        n = len(parts[0])
        padded = [np.concatenate([p, np.zeros((CHUNK - n, *p.shape[1:]), p.dtype)]) for p in parts]
        out.append(np.asarray(fn(*padded))[:n])
    return np.concatenate(out)


def load_real(model, paths, horizon, starts, seed, frame_horizons, video_starts) -> RealSet:
    """Encode every rollout (the per-step metrics cover all of them, short ones and their
    terminations included), choose the starts among those long enough, keep the frames to compare."""
    lengths = [shard_length(p) for p in paths]
    chosen = choose_starts(lengths, horizon, starts, seed)
    if chosen is None:
        longest = int(np.argmax(lengths))
        raise ValueError(
            f"horizon {horizon} needs rollouts of at least {horizon + 1} steps; the longest of the "
            f"{len(paths)} shards is {paths[longest]} with {lengths[longest]}"
        )
    used, start_rollout, start_t = chosen
    start_rollout = used[start_rollout]  # [N]: into all the rollouts
    size = model.frames.size
    if FRAME_SHAPE != (size, size, 3):
        raise ValueError(f"shards hold {FRAME_SHAPE} frames; the model's VAE takes {size}x{size}x3")
    tmax, d = max(lengths), model.latent_dim
    z = np.zeros((len(paths), tmax, d), np.float32)
    action = np.zeros((len(paths), tmax, 3), np.float32)
    reward = np.zeros((len(paths), tmax), np.float32)
    terminated = np.zeros((len(paths), tmax), bool)
    grid = np.asarray(frame_horizons)
    video = [int(np.flatnonzero(start_rollout == r)[0]) for r in used[:video_starts]]  # one per rollout
    frames_grid = np.zeros((len(start_t), len(grid), *FRAME_SHAPE), np.uint8)
    frames_video = np.zeros((len(video), horizon + 1, *FRAME_SHAPE), np.uint8)
    policies = []
    for r, path in enumerate(paths):
        shard = load_shard(path)
        policies.append(episode_policy(shard["meta"]))
        n = lengths[r]
        z[r, :n] = chunked(partial(wm.encode, model), shard["obs"])
        action[r, :n], reward[r, :n], terminated[r, :n] = shard["action"], shard["reward"], shard["terminated"]
        for j in np.flatnonzero(start_rollout == r):
            s = start_t[j]
            frames_grid[j] = shard["obs"][s + grid]
            if j in video:
                frames_video[video.index(j)] = shard["obs"][s : s + horizon + 1]
    return RealSet(
        files=[path.name for path in paths],
        policies=policies,
        z=z,
        action=action,
        reward=reward,
        terminated=terminated,
        length=np.array(lengths),
        start_rollout=start_rollout,
        start_t=start_t,
        frames_grid=frames_grid,
        video_index=np.array(video, int),
        frames_video=frames_video,
    )
