"""The fidelity benchmark's figures: PNG plots drawn from its JSON, a filmstrip and a GIF.

    files = draw(result, out)                       # {name: file name}, each plot from result only
    write_video(path, [{"real": [T, 64, 64, 3], "dream": ...}, ...])   # rows: starts, columns: keys
    filmstrip(path, horizons, {"real": [G, 64, 64, 3], ...})
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

DPI = 80
COLORS = {"open_loop_mean": "C0", "dream_mean": "C0", "open_loop_sampled": "C1", "dream_sampled": "C1",
          "teacher_forced": "C2", "persistence": "C3", "data_mean": "C4", "vae_reconstruction": "C5"}
LABELS = {
    "open_loop_mean": "dream, mixture mean (open-loop)",
    "open_loop_sampled": "dream, sampled (open-loop)",
    "teacher_forced": "teacher-forced 1-step",
    "persistence": "persistence z_s",
    "data_mean": "data mean",
    "dream_mean": "dream, mixture mean",
    "dream_sampled": "dream, sampled",
    "vae_reconstruction": "VAE reconstruction",
}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def _curves(ax, x, curves: dict, ylabel: str, log: bool = False, stderr: dict | None = None):
    """One line per curve (None: a gap), with a ±1 standard-error band where `stderr` has one."""
    for name, y in curves.items():
        y = np.array([np.nan if v is None else v for v in y])
        ax.plot(x, y, label=LABELS.get(name, name), color=COLORS.get(name), marker="." if len(x) < 20 else None)
        if stderr and name in stderr:
            e = np.array([np.nan if v is None else v for v in stderr[name]])
            ax.fill_between(x, y - e, y + e, color=COLORS.get(name), alpha=0.2, lw=0)
    ax.set_xlabel("horizon h (steps)")
    ax.set_ylabel(ylabel)
    if log and all(v is not None and v > 0 for y in curves.values() for v in y):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def draw(result: dict, out: Path) -> dict:
    """Every plot of `result` (the fidelity JSON) into folder `out`. -> {figure: file name}

    latent.png: latent.mse, latent.nll; frames.png: frames; reward.png: reward.window_sums,
    reward.cumulative_abs_error; done.png: done.reliability.
    """
    h, lat, fr, rw, dn = result["horizons"], result["latent"], result["frames"], result["reward"], result["done"]
    files = {}

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    _curves(a, h, lat["mse"], "latent MSE per dim (±1 s.e.)", log=True, stderr=lat["mse_stderr"])
    _curves(b, h, lat["nll"], "NLL of the real z_{s+h} (nats)")
    files["latent"] = _save(fig, out / "latent.png")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric in zip(axes, ("mse", "psnr", "ssim")):
        _curves(ax, fr["horizons"], fr[metric], f"decoded frame {metric.upper()}")
        ax.set_xscale("log")
    files["frames"] = _save(fig, out / "frames.png")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    sums = rw["window_sums"]
    lo, hi = min(min(v) for v in sums.values()), max(max(v) for v in sums.values())
    a.plot([lo, hi], [lo, hi], "k:", lw=1)
    for name in ("teacher_forced", "open_loop_mean", "open_loop_sampled"):
        a.scatter(sums["actual"], sums[name], s=10, label=LABELS[name], color=COLORS[name])
    a.set_xlabel(f"actual reward summed over {len(h)} steps")
    a.set_ylabel("predicted")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    _curves(b, h, rw["cumulative_abs_error"], "|predicted − actual| cumulative reward")
    files["reward"] = _save(fig, out / "reward.png")

    fig, ax = plt.subplots(figsize=(5, 3.8))
    bins = dn["reliability"]
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-")
    for b in bins:
        ax.annotate(str(b["count"]), (b["mean_predicted"], b["observed"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(done) (bin mean)", ylabel="observed frequency")
    ax.set_title(f"done reliability: {dn['terminal_steps']} terminal of {dn['steps']} steps", fontsize=9)
    ax.grid(alpha=0.3)
    files["done"] = _save(fig, out / "done.png")
    return files


def _label(strip: np.ndarray, text: str) -> np.ndarray:
    """A dark header strip (rows, W, 3) with white text."""
    image = Image.fromarray(strip)
    ImageDraw.Draw(image).text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def write_video(path: Path, videos: list[dict], fps: int = 10, every: int = 2) -> str:
    """A GIF of every `every`-th step: one row per start, one column per key (frames [T, 64, 64, 3]
    each), labelled. One 64-colour palette, no dithering: flat CarRacing frames stay small."""
    names = list(videos[0])
    rows = np.concatenate([np.concatenate([v[n] for n in names], axis=2) for v in videos], axis=1)  # [T, H, W, 3]
    width, cell = rows.shape[2], rows.shape[2] // len(names)
    header = np.full((12, width, 3), 32, np.uint8)
    for i, n in enumerate(names):
        header[:, i * cell : (i + 1) * cell] = _label(header[:, i * cell : (i + 1) * cell].copy(), n)
    footer = np.full((12, width, 3), 32, np.uint8)
    frames = [np.concatenate([header, rows[t], _label(footer.copy(), f"h = {t}")]) for t in range(0, len(rows), every)]
    sample = Image.fromarray(np.concatenate(frames[:: max(1, len(frames) // 8)]))
    palette = sample.quantize(colors=64, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
    return path.name


def filmstrip(path: Path, horizons: list[int], rows: dict) -> str:
    """A PNG grid: one row per key, one column per horizon (frames [G, 64, 64, 3] each)."""
    fig, axes = plt.subplots(len(rows), len(horizons), figsize=(1.1 * len(horizons) + 1.2, 1.1 * len(rows)),
                             squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c, h in enumerate(horizons):
            ax = axes[r, c]
            ax.imshow(frames[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"h = {h}", fontsize=8)
            if c == 0:
                ax.set_ylabel(LABELS.get(name, name), fontsize=7, rotation=0, ha="right", va="center")
    return _save(fig, path)
