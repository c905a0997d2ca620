"""Does the dream follow the real world? Open-loop fidelity of a world model on real rollouts.

`python -m benchmarks.fidelity` encodes every rollout of --shards, runs the MDN-RNN over them
teacher-forced (the per-step metrics below cover every step of every rollout, short ones and their
terminations included), picks N start points spread over the rollouts long enough for the horizon
(deterministic given --seed), and from the warmed-up state at each feeds it the real actions
open-loop for H steps (benchmarks/open_loop.py). It compares, at every horizon h:
  latents  MSE to the real encoded z_{s+h} of the mixture-mean dream, of sampled dreams at τ, of
           the teacher-forced 1-step prediction, and of two baselines: persistence (z_s) and the
           mean latent of the evaluated rollouts; NLL of the real z_{s+h}, teacher-forced and open-loop;
  frames   decoded-frame MSE, PSNR and SSIM against the real frame (and the VAE's reconstruction,
           the floor any dream has);
  reward   predicted vs actual reward summed over each window, per-step correlation;
  done     reliability of P(done) (teacher-forced, every step of the rollouts), AUC, and the
           terminal steps where P(done) > 0.5 (the env's rule) would end the episode;
  by policy  the teacher-forced per-step metrics over each driving policy's rollouts (shard meta).
Prints tables, writes OUT/fidelity.json (the data of every figure), PNG plots and a GIF
(real | dream, same start, same actions).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np

from benchmarks import fidelity_plots
from benchmarks.fidelity_data import chunked, load_real, select_shards
from benchmarks.fidelity_tables import markdown
from benchmarks.image_metrics import frame_mse, psnr, ssim
from benchmarks.open_loop import open_loop, teacher_forced
from dreamenv import world_model as wm
from dreamenv.atomic import atomic_write
from dreamenv.checkpoint import Bundle, load_bundle
from dreamenv.model import DEFAULT_MODEL
from train.mdnrnn_loss import auc

MAX_HORIZON = 200
HORIZONS = (1, 2, 5, 10, 20, 50, 100, 200)  # frame metrics and table rows at these (< H) and H
HEADLINE = (1, 10, 50)
SMOKE = dict(horizon=6, starts=3, samples=2)
BINS = 10  # reliability bins of P(done)
VIDEO_STARTS = 2  # rows of the video, from different rollouts where there are several


def _safe_ratio(a, b):
    return [x / y if y > 0 else None for x, y in zip(a, b)]


def _corr(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None


def _json(x):
    """numpy -> Python, non-finite floats -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x.item() if isinstance(x, np.generic) else x


def latent_metrics(real, tf, mean, sampled, target, z_s, idx) -> dict:
    """Per-horizon curves [H] (means over starts, and their standard errors).

    target [N, H, D] real z_{s+h}; idx [N, H] the step t = s + h - 1.
    """
    r = real.start_rollout[:, None]
    mse = lambda pred: ((pred - target) ** 2).mean(-1)  # [..., N, H]
    per_start = {  # [N, H]
        "open_loop_mean": mse(mean["z"]),
        "open_loop_sampled": mse(sampled["z"]).mean(0),
        "teacher_forced": mse(tf["pred"][r, idx]),
        "persistence": mse(z_s[:, None]),
        "data_mean": mse(real.mean_latent),
    }
    n = len(z_s)
    curves = {k: v.mean(0) for k, v in per_start.items()}
    return {
        "mse": curves,
        "mse_stderr": {k: v.std(0) / np.sqrt(max(n - 1, 1)) for k, v in per_start.items()},
        "mse_ratio_to_persistence": {
            k: _safe_ratio(curves[k], curves["persistence"]) for k in ("open_loop_mean", "open_loop_sampled")
        },
        "nll": {"teacher_forced": -tf["log_prob"][r, idx].mean(0), "open_loop_mean": -mean["log_prob"].mean(0)},
        "one_step_every_step": _one_step(real, tf),
    }


def _one_step(real, tf, rollouts=slice(None)) -> dict:
    """Teacher-forced 1-step MSE and NLL over every step of the rollouts (or of `rollouts`, an
    index into them), and persistence's MSE."""
    has_next = (real.valid[:, 1:] & real.valid[:, :-1])[rollouts]  # [R, T-1]: z_{t+1} is real
    z, pred, log_prob = real.z[rollouts], tf["pred"][rollouts], tf["log_prob"][rollouts]
    nxt = z[:, 1:]
    model = ((pred[:, :-1] - nxt) ** 2).mean(-1)[has_next].mean()
    persistence = ((z[:, :-1] - nxt) ** 2).mean(-1)[has_next].mean()
    return {"steps": int(has_next.sum()), "mse": model, "mse_persistence": persistence,
            "mse_ratio_to_persistence": model / persistence if persistence > 0 else None,
            "nll": -log_prob[:, :-1][has_next].mean()}


def by_policy(real, tf) -> dict:
    """The teacher-forced per-step metrics over the rollouts of each policy that drove them."""
    out = {}
    for name in sorted(set(real.policies)):
        rows = np.array([i for i, p in enumerate(real.policies) if p == name])
        valid = real.valid[rows]
        one = _one_step(real, tf, rows)
        out[name] = {"rollouts": len(rows), "steps": int(valid.sum()),
                     "mse_ratio_to_persistence": one["mse_ratio_to_persistence"],
                     "reward_step_corr": _corr(tf["reward"][rows][valid], real.reward[rows][valid]),
                     "terminal_steps": int(real.terminated[rows][valid].sum()),
                     "done_auc": auc(tf["done_logit"][rows][valid], real.terminated[rows][valid])}
    return out


def reward_metrics(real, tf, mean, sampled, idx) -> dict:
    """Predicted vs actual reward over each start's window of H steps, and per step."""
    r = real.start_rollout[:, None]
    actual = real.reward[r, idx]  # [N, H]
    preds = {
        "teacher_forced": tf["reward"][r, idx],
        "open_loop_mean": mean["reward"],
        "open_loop_sampled": sampled["reward"].mean(0),  # the mean over samples
    }
    summary = {}
    for name, p in preds.items():
        err = p.sum(1) - actual.sum(1)
        summary[name] = {
            "window_sum_predicted": p.sum(1).mean(),
            "window_sum_actual": actual.sum(1).mean(),
            "bias": err.mean(),
            "mae": np.abs(err).mean(),
            "window_corr": _corr(p.sum(1), actual.sum(1)),
            "step_corr": _corr(p, actual),
        }
    valid = real.valid
    return {
        "summary": summary,
        "window_sums": {"actual": actual.sum(1), **{k: p.sum(1) for k, p in preds.items()}},
        "cumulative_abs_error": {k: np.abs(np.cumsum(p - actual, 1)).mean(0) for k, p in preds.items()},
        "teacher_forced_step_corr_all_steps": _corr(tf["reward"][valid], real.reward[valid]),
    }


def done_metrics(real, tf, mean, sampled) -> dict:
    """Reliability of the teacher-forced P(done) on every step; dream terminations open-loop."""
    p = 1.0 / (1.0 + np.exp(-tf["done_logit"][real.valid]))
    y = real.terminated[real.valid]
    bin_of = np.minimum((p * BINS).astype(int), BINS - 1)
    reliability = [
        {"lo": b / BINS, "hi": (b + 1) / BINS, "count": int((bin_of == b).sum()),
         "mean_predicted": p[bin_of == b].mean(), "observed": y[bin_of == b].mean()}
        for b in range(BINS) if (bin_of == b).any()
    ]
    terminal = int(y.sum())
    return {
        "steps": int(len(y)),
        "terminal_steps": terminal,
        "terminal_steps_predicted": int((p[y] > 0.5).sum()),  # where the env's P(done) > 0.5 would end it
        "false_terminations": int((p[~y] > 0.5).sum()),
        "auc": auc(p, y),
        "brier": np.mean((p - y) ** 2),
        "reliability": reliability,
        "note": "" if terminal else "no terminal steps in the evaluated rollouts: AUC is undefined and "
        "the reliability only shows how often the head predicts an end that never came",
        # Real windows hold no terminal step (they end before a rollout's last step).
        "open_loop_termination_rate": {
            "mean": (mean["done_logit"] > 0).mean(), "sampled": sampled["terminated"].mean()},
    }


def frame_metrics(model, real, mean, sampled, target, z_s, grid) -> tuple[dict, dict]:
    """Decoded frames at the horizons `grid` against the real ones. -> (metrics, frames [N, G, ...])"""
    decode = lambda z: chunked(partial(wm.decode, model), z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], 64, 64, 3)
    g = np.asarray(grid) - 1
    n = len(z_s)
    frames = {
        "dream_mean": decode(mean["z"][:, g]),
        "dream_sampled": decode(sampled["z"][0][:, g]),
        "persistence": np.repeat(decode(z_s)[:, None], len(g), 1),
        "data_mean": np.broadcast_to(decode(real.mean_latent[None]), real.frames_grid.shape),
        "vae_reconstruction": decode(target[:, g]),
    }
    flat_real = real.frames_grid.reshape(-1, 64, 64, 3)
    metrics = {"horizons": list(grid), "mse": {}, "psnr": {}, "ssim": {}}
    for name, f in frames.items():
        flat = np.ascontiguousarray(f).reshape(-1, 64, 64, 3)
        mse = chunked(frame_mse, flat, flat_real).reshape(n, -1)
        metrics["mse"][name] = mse.mean(0)
        metrics["psnr"][name] = psnr(mse).mean(0)
        metrics["ssim"][name] = chunked(ssim, flat, flat_real).reshape(n, -1).mean(0)
    return metrics, frames


def run(
    model: str | Path | Bundle = DEFAULT_MODEL,
    shards: str | Path = "data/heldout",
    heldout_of: str | Path | None = None,
    horizon: int = MAX_HORIZON,
    starts: int = 32,
    temperature: float = 1.0,
    samples: int = 4,
    seed: int = 0,
    out: str | Path = "benchmarks/out/fidelity",
    smoke: bool = False,
) -> dict:
    """Measure, plot, write OUT/fidelity.json; returns the JSON's dict. smoke: tiny budgets."""
    if smoke:
        horizon, starts, samples = (min(v, SMOKE[k]) for k, v in
                                    (("horizon", horizon), ("starts", starts), ("samples", samples)))
    if not 1 <= horizon <= MAX_HORIZON or starts < 1 or samples < 1 or temperature < 0:
        raise ValueError(f"need 1 <= horizon <= {MAX_HORIZON}, starts >= 1, samples >= 1, temperature >= 0; "
                         f"got {horizon}, {starts}, {samples}, {temperature}")
    t0 = time.perf_counter()
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    world = wm.WorldModel.from_bundle(bundle)
    paths, split = select_shards(shards, heldout_of)
    grid = [h for h in HORIZONS if h < horizon] + [horizon]
    real = load_real(world, paths, horizon, starts, seed, grid, VIDEO_STARTS)
    t_data = time.perf_counter()

    warm, tf = teacher_forced(world, real.z, real.action, real.start_rollout, real.start_t)
    idx = real.start_t[:, None] + np.arange(horizon)  # [N, H]: t = s + h - 1, predicting z_{s+h}
    r = real.start_rollout[:, None]
    target, z_s = real.z[r, idx + 1], real.z[real.start_rollout, real.start_t]  # [N, H, D], [N, D]
    mean, sampled = open_loop(world, warm, z_s, real.action[r, idx], target, jax.random.key(seed),
                              temperature, samples)
    tf, mean, sampled = jax.device_get((tf, mean, sampled))
    t_model = time.perf_counter()
    frames, decoded = frame_metrics(world, real, mean, sampled, target, z_s, grid)
    t_frames = time.perf_counter()

    result = {
        "settings": {"model": str(model) if not isinstance(model, Bundle) else "in-memory bundle",
                     "shards": str(shards), "split": split, "horizon": horizon, "starts": len(real.start_t),
                     "temperature": temperature, "samples": samples, "seed": seed, "smoke": smoke},
        "data": {"rollouts": real.files, "steps_encoded": int(real.length.sum()),
                 "starts": [[real.files[i], int(s)] for i, s in zip(real.start_rollout, real.start_t)]},
        "horizons": list(range(1, horizon + 1)),
        "latent": latent_metrics(real, tf, mean, sampled, target, z_s, idx),
        "frames": frames,
        "reward": reward_metrics(real, tf, mean, sampled, idx),
        "done": done_metrics(real, tf, mean, sampled),
        "by_policy": by_policy(real, tf),
    }
    ratio = result["latent"]["mse_ratio_to_persistence"]
    result["headline"] = {f"h{h}": {k: v[h - 1] for k, v in ratio.items()} for h in HEADLINE if h <= horizon}
    result = _json(result)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = fidelity_plots.draw(result, out)
    video = [{"real": real.frames_video[v], "dream": _with_start(world, z_s[j], mean["z"][j]),
              "sample": _with_start(world, z_s[j], sampled["z"][0, j])}  # dream: mixture mean; sample: at τ
             for v, j in enumerate(real.video_index)]
    result["files"]["video"] = fidelity_plots.write_video(out / "dream.gif", video)
    result["files"]["filmstrip"] = fidelity_plots.filmstrip(
        out / "filmstrip.png", grid, {"real": real.frames_grid[0], **{k: v[0] for k, v in decoded.items()}})
    result["seconds"] = {"data": t_data - t0, "model": t_model - t_data, "frames": t_frames - t_model,
                         "figures": time.perf_counter() - t_frames, "total": time.perf_counter() - t0}
    atomic_write(out / "fidelity.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    return result


def _with_start(model, z_s, z_path):
    """The decoded frames z_s, then the dream's z_{s+1} … z_{s+H}: [H + 1, 64, 64, 3]."""
    z = np.concatenate([z_s[None], z_path])
    return chunked(partial(wm.decode, model), z)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a bundle folder (default: the shipped one)")
    p.add_argument("--shards", default="data/heldout",
                   help="a folder of rollout shards (any policy; `python -m benchmarks.report` fills data/heldout)")
    p.add_argument("--heldout-of", default=None, help="a VAE run folder: keep only the shards its split held out")
    p.add_argument("--horizon", type=int, default=MAX_HORIZON, help=f"open-loop steps (at most {MAX_HORIZON})")
    p.add_argument("--starts", type=int, default=32, help="start points, spread over the rollouts")
    p.add_argument("--temperature", type=float, default=1.0, help="τ of the sampled dreams")
    p.add_argument("--samples", type=int, default=4, help="sampled dreams per start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/fidelity", help="output folder")
    p.add_argument("--smoke", action="store_true", help=f"tiny budgets {SMOKE}")
    args = p.parse_args(argv)
    result = run(args.model, args.shards, args.heldout_of, args.horizon, args.starts, args.temperature,
                 args.samples, args.seed, args.out, args.smoke)
    print(markdown(result))
    print(f"\nheadline (open-loop MSE / persistence): {result['headline']}")
    print(f"{result['seconds']['total']:.1f} s; wrote {args.out}/fidelity.json")


if __name__ == "__main__":
    main()
