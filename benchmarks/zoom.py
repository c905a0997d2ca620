"""Does the dream zoom in as the game does? How many dreams stay in the start's zoomed-out view.

CarRacing-v3 opens every episode zoomed out on the whole track and zooms in on the car over its
first second (50 steps), whatever the actions. A dream starts from a real first frame (zoomed out)
and must zoom in by itself; some stay zoomed out for hundreds of steps.

`python -m benchmarks.zoom [--model BUNDLE ...] [--shards data/heldout] [--episodes 256]
[--steps 500] [--temperature 1.0]`:

1. A view classifier on real latents: the model's VAE encodes the real rollouts in `--shards`;
   frames before step 20 are "zoomed out", from step 60 on "driving view" (the zoom-in between is
   left out). A logistic regression on z is fit on half the rollouts and scored on the other half
   (its held-out accuracy is reported, with the fraction of real frames it calls zoomed out by step,
   the reference the dream should match).
2. Each model dreams `--episodes` episodes from real starts per fixed control (those of
   `benchmarks.controls`) for `--steps` steps (terminations ignored: this measures the picture),
   and the classifier reads the dreamed frames at the `--at` steps (decoded, then encoded as a
   real frame is).

Reported per model and control: the fraction of dreams seen zoomed out at each of `--at` steps.
Prints a table, writes JSON (default benchmarks/out/zoom.json).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import emit
from benchmarks.controls import CONTROLS
from benchmarks.fidelity_data import chunked, select_shards
from dreamenv import world_model as wm
from dreamenv.envs.spaces import check_temperature
from dreamenv.model import DEFAULT_MODEL, load_model
from dreamenv.shards import load_shard

ZOOMED_OUT_BEFORE = 20  # real frames before this step are labelled zoomed out
DRIVING_FROM = 60  # ... from this step on, driving view (the zoom-in ends at step 50)


def fit_view_classifier(z, zoomed_out, iters: int = 50, ridge: float = 1e-3):
    """Logistic regression by Newton's method. z: [N, D], zoomed_out: [N] bool -> (w [D], b)."""
    x = np.concatenate([z, np.ones((len(z), 1))], axis=1).astype(np.float64)
    y = zoomed_out.astype(np.float64)
    theta = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -30, 30)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        theta -= np.linalg.solve(hessian, x.T @ (p - y) + ridge * theta)
    return theta[:-1], theta[-1]


def is_zoomed_out(classifier, z) -> np.ndarray:
    """z [..., D] -> bool [...]: the classifier's call."""
    w, b = classifier
    return np.asarray(z) @ w + b > 0.0


def real_views(model: wm.WorldModel, paths: list[Path]) -> list[np.ndarray]:
    """The VAE-mean latents [T, D] of each real rollout."""
    return [chunked(lambda f: wm.encode(model, f), load_shard(p)["obs"]) for p in paths]


def labelled(latents: list[np.ndarray]):
    """-> (z [N, D], zoomed_out [N]) from the clearly zoomed-out and clearly zoomed-in steps."""
    z = [r[:ZOOMED_OUT_BEFORE] for r in latents] + [r[DRIVING_FROM:] for r in latents]
    label = [np.ones(len(r[:ZOOMED_OUT_BEFORE]), bool) for r in latents]
    label += [np.zeros(len(r[DRIVING_FROM:]), bool) for r in latents]
    return np.concatenate(z), np.concatenate(label)


@partial(jax.jit, static_argnames=("episodes", "steps"))
def dream_latents(model: wm.WorldModel, action, key, episodes: int, steps: int, temperature):
    """`episodes` dreams from real starts under a fixed action [3]. -> z [steps + 1, episodes, D]"""
    k_reset, k_steps = jax.random.split(key)
    state, _ = wm.reset(model, k_reset, episodes, obs="z")
    actions = jnp.broadcast_to(action, (episodes, 3))

    def body(state, k):
        state, z, _, _ = wm.step(model, state, actions, k, temperature, obs="z")
        return state, z

    _, zs = jax.lax.scan(body, state, jax.random.split(k_steps, steps))
    return jnp.concatenate([state.z[None], zs])


def dreamed_views(model: wm.WorldModel, classifier, z, at: list[int]) -> list[float | None]:
    """z [S, N, D] dreamed latents -> the fraction of the N dreams zoomed out at each step of `at`
    (None past S). The classifier reads the dreamed *frame*: z is decoded and re-encoded (the VAE
    mean), so sampling noise in z, which real latents lack, does not decide the call."""
    seen = lambda s: chunked(lambda zs: wm.encode(model, wm.decode(model, zs)), np.asarray(z[s]))
    return [float(is_zoomed_out(classifier, seen(s)).mean()) if s < len(z) else None for s in at]


def zoom(models=(None,), shards="data/heldout", episodes: int = 256, steps: int = 500, temperature: float = 1.0,
         at=(0, 10, 50, 100, 200, 500), seed: int = 0) -> dict:
    """-> {"classifier": {...}, "real": [...], "rows": [{control, dream: [fractions per model]}], ...}"""
    temperature = check_temperature(temperature)
    at = sorted(at)
    paths, split = select_shards(shards)
    if len(paths) < 2:
        raise ValueError(f"{shards} holds {len(paths)} shard(s); the classifier needs at least 2 rollouts")
    worlds = [load_model(m) for m in models]
    result_models = []
    for world, name in zip(worlds, models):
        latents = real_views(world, paths)
        fit, test = latents[0::2], latents[1::2]
        classifier = fit_view_classifier(*labelled(fit))
        z_test, label_test = labelled(test)
        accuracy = float((is_zoomed_out(classifier, z_test) == label_test).mean())
        real_at = [is_zoomed_out(classifier, np.array([r[s] for r in test if s < len(r)]).reshape(-1, world.latent_dim))
                   for s in at]
        real_at = [float(v.mean()) if v.size else None for v in real_at]
        rows = []
        for control, action in CONTROLS.items():
            z = dream_latents(world, jnp.asarray(action, jnp.float32), jax.random.key(seed), episodes, steps,
                              jnp.float32(temperature))
            rows.append({"control": control, "zoomed_out": dreamed_views(world, classifier, z, at)})
        result_models.append({"model": str(name or DEFAULT_MODEL), "classifier_accuracy": accuracy,
                              "real_zoomed_out": real_at, "dreams": rows})
    fmt = lambda x: "–" if x is None else f"{x:.2f}"
    lines = []
    for m in result_models:
        lines += [f"\n**{m['model']}** (view classifier held-out accuracy {m['classifier_accuracy']:.3f})\n",
                  "| zoomed out at step | " + " | ".join(str(s) for s in at) + " |",
                  "|---|" + "---:|" * len(at),
                  "| real rollouts | " + " | ".join(fmt(x) for x in m["real_zoomed_out"]) + " |"]
        lines += [f"| dream: {r['control']} | " + " | ".join(fmt(x) for x in r["zoomed_out"]) + " |"
                  for r in m["dreams"]]
    lines.append(f"\nFraction of frames (real: {len(paths) // 2} rollouts not used to fit the classifier, "
                 f"{split}) or dreams ({episodes} per control at τ = {temperature:g}, from real starts) that "
                 f"the classifier calls zoomed out.")
    return {"models": [m["model"] for m in result_models], "shards": str(shards), "split": split,
            "episodes": episodes, "steps": steps, "temperature": temperature, "at": at, "seed": seed,
            "results": result_models, "markdown": "\n".join(lines)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, nargs="+", default=[None], help="bundle folders (default: the shipped one)")
    p.add_argument("--shards", type=Path, default=Path("data/heldout"), help="real rollouts (shard folder)")
    p.add_argument("--episodes", type=int, default=256, help="dreams per control")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--at", type=int, nargs="+", default=[0, 10, 50, 100, 200, 500], help="steps to report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/zoom.json"))
    args = p.parse_args(argv)
    for name in ("episodes", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.at) < 0:
        p.error(f"--at steps must be >= 0, got {args.at}")
    result = zoom(args.model, args.shards, args.episodes, args.steps, args.temperature, args.at, args.seed)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
