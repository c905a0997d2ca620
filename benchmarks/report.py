"""One report on a world model: throughput, open-loop fidelity on real rollouts, agent transfer.

`python -m benchmarks.report` runs benchmarks/throughput.py, benchmarks/fidelity.py and (when an
agent is given, or exists at benchmarks/results/ppo_driver.zip) benchmarks/transfer.py with
budgets that fit a few minutes (`--full`: larger; `--smoke`: tiny, for tests), and writes one
folder: report.md (tables, plots, the dream video, machine and git commit) and every JSON.
`--publish` copies report.md and its figures into benchmarks/results/report/ (committed, small).

Fidelity runs on --shards (default data/heldout: real rollouts collected apart from the training
data, with other seeds, so other tracks). When that folder holds no shards, the report first
collects FRESH[budget] rollouts of the default mix into it (`train.collect`, seed 1; the
training data uses seed 0), so it works from a fresh clone. Every shard is evaluated unless
--heldout-of names a VAE run whose held-out split to keep (for a folder of training rollouts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

import jax

from benchmarks import fidelity, throughput
from benchmarks.fidelity_tables import markdown as fidelity_markdown
from dreamenv.atomic import atomic_write
from dreamenv.model import DEFAULT_MODEL
from dreamenv.shards import list_shards
from train import collect
from train.collect import CollectConfig, default_workers
from train.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AGENT = ROOT / "benchmarks/results/ppo_driver.zip"
PUBLISHED = ROOT / "benchmarks/results/report"
PUBLISH_LIMIT = 2 * 2**20  # bytes
FRESH = {"smoke": (2, 60), "default": (8, 1000), "full": (40, 1000)}  # (rollouts, steps) when --shards holds none
FRESH_SEED = 1  # the training data is collected with seed 0
BUDGETS = {
    "smoke": dict(
        throughput=["--seconds", "0.02", "--rounds", "1", "--scan-steps", "4", "--stability-steps", "0"],
        fidelity=dict(smoke=True),
        transfer=dict(temperatures=[1.0], real_episodes=1, dream_episodes=2, workers=1, max_steps=50),
    ),
    "default": dict(
        throughput=["--seconds", "0.5", "--rounds", "1", "--scan-steps", "100", "--stability-steps", "0"],
        fidelity=dict(horizon=200, starts=16, samples=4),
        transfer=dict(temperatures=[1.0], real_episodes=3, dream_episodes=32, workers=2),
    ),
    "full": dict(
        throughput=["--seconds", "2", "--rounds", "3", "--scan-steps", "1000", "--stability-steps", "200000"],
        fidelity=dict(horizon=200, starts=128, samples=8),
        transfer=dict(temperatures=[0.75, 1.0, 1.15, 1.3], real_episodes=20, dream_episodes=256, workers=2),
    ),
}


def machine() -> dict:
    """CPU, cores, load, versions and the git commit (with a flag for uncommitted changes)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        **git_state(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def fresh_rollouts(shards: Path, episodes: int, max_steps: int) -> None:
    """Collect `episodes` real rollouts (default mix, seed 1) into `shards` unless it holds some."""
    if shards.is_dir() and list_shards(shards):
        return
    print(f"no shards in {shards}: collecting {episodes} real CarRacing-v3 rollouts there (seed {FRESH_SEED})")
    result = collect.run(CollectConfig(out=shards, seed=FRESH_SEED, max_steps=max_steps, episodes=episodes,
                                       workers=min(default_workers(), episodes)))
    if result.failures:
        raise RuntimeError(f"collecting {shards} failed for episodes {sorted(result.failures)}")


def throughput_section(out: Path, model: Path, args: list[str]) -> str:
    throughput.main([*args, "--model", str(model), "--out", str(out / "throughput.json")])
    result = json.loads((out / "throughput.json").read_text())
    rows = [
        f"| {name} | {b['steps_per_s']:,.0f} | {b['ratio_to_carracing']:.2f} | "
        f"{'' if b['target_ratio'] is None else '>= %g' % b['target_ratio']} | {b['cpu_us_per_step']:.1f} |"
        for name, b in result["benchmarks"].items()
    ]
    return "\n".join([
        f"Settings: `{' '.join(args)}` (short slices: other jobs on the machine move every figure; "
        f"compare the ratios). JSON: [throughput.json](throughput.json).",
        "",
        "| benchmark | steps/s | × CarRacing-v3 | target | CPU µs/step |",
        "|---|---|---|---|---|",
        *rows,
    ])


def fidelity_section(out: Path, model: Path, shards: Path, heldout_of: Path | None, budget: dict) -> str:
    result = fidelity.run(model, shards, heldout_of, out=out, **budget)
    s, files = result["settings"], result["files"]
    head = "; ".join(
        f"h={h[1:]}: {_num(r['open_loop_mean'])} (mean), {_num(r['open_loop_sampled'])} (sampled)"
        for h, r in result["headline"].items()
    )
    figures = "\n\n".join(f"![{name}]({f})" for name, f in files.items() if f.endswith(".png"))
    return "\n".join([
        f"Data: {s['split']}; {s['starts']} starts over {len(result['data']['rollouts'])} rollouts, "
        f"horizon {s['horizon']}, {s['samples']} samples at τ = {s['temperature']:g}, seed {s['seed']} "
        f"({result['seconds']['total']:.0f} s). JSON: [fidelity.json](fidelity.json).",
        "",
        f"**Open-loop latent MSE ÷ persistence**: {head}; teacher-forced 1-step over every step: "
        f"{_num(result['latent']['one_step_every_step']['mse_ratio_to_persistence'])}.",
        "",
        f'<img src="{files["video"]}" width="{4 * 192}" alt="real | dream | sample">',
        "",
        "Video: rows are starts; columns are the real frames, the mixture-mean dream and one sampled "
        f"dream (τ = {s['temperature']:g}), all on the real actions from the same start.",
        "",
        figures,
        "",
        fidelity_markdown(result),
    ])


def _num(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def transfer_section(out: Path, model: Path, agent: Path | None, budget: dict) -> str:
    if agent is None:
        return (f"No agent yet: none was given (`--agent PATH`) and none exists at "
                f"{os.path.relpath(DEFAULT_AGENT, ROOT)}.")
    from benchmarks.transfer import transfer  # only when there is an agent to transfer

    result = transfer(agent, model, seed=0, **budget)
    atomic_write(out / "transfer.json", lambda f: f.write(json.dumps(result, indent=1, default=str).encode()))
    return f"Agent: `{agent}`. JSON: [transfer.json](transfer.json).\n\n{result['markdown']}"


def report(out: str | Path = "benchmarks/out/report", model: str | Path = DEFAULT_MODEL,
           agent: str | Path | None = None, budget: str = "default", shards: str | Path = "data/heldout",
           heldout_of: str | Path | None = None, publish: bool = False) -> Path:
    """Run the benchmarks at `budget` ("smoke" | "default" | "full"); -> the path of report.md."""
    start = time.perf_counter()
    out, model = Path(out), Path(model)
    out.mkdir(parents=True, exist_ok=True)
    agent = Path(agent) if agent is not None else (DEFAULT_AGENT if DEFAULT_AGENT.is_file() else None)
    if agent is not None and not agent.is_file():
        raise FileNotFoundError(f"agent {agent} does not exist")
    fresh_rollouts(Path(shards), *FRESH[budget])
    b = BUDGETS[budget]
    info = machine()
    sections = {
        "Throughput": throughput_section(out, model, b["throughput"]),
        "Fidelity": fidelity_section(out, model, Path(shards), heldout_of, b["fidelity"]),
        "Transfer": transfer_section(out, model, agent, b["transfer"]),
    }
    machine_rows = [f"| {k} | {', '.join(v) if isinstance(v, list) else v} |" for k, v in info.items()]
    text = "\n\n".join([
        "# World-model report",
        f"Model `{model}`, budget `{budget}`, {time.perf_counter() - start:.0f} s in all. "
        f"Every figure below was measured in this run.",
        "## Machine\n\n| | |\n|---|---|\n" + "\n".join(machine_rows),
        *(f"## {name}\n\n{body}" for name, body in sections.items()),
    ]) + "\n"
    atomic_write(out / "machine.json", lambda f: f.write(json.dumps(info, indent=1).encode()))
    atomic_write(out / "report.md", lambda f: f.write(text.encode()))
    if publish:
        publish_report(out)
    return out / "report.md"


def publish_report(out: Path, dest: Path = PUBLISHED) -> list[str]:
    """Copy report.md, its PNGs, GIF and JSONs to `dest` (replacing the last), if under PUBLISH_LIMIT."""
    files = [out / "report.md", *sorted(p for ext in ("png", "gif", "json") for p in out.glob(f"*.{ext}"))]
    size = sum(p.stat().st_size for p in files)
    if size > PUBLISH_LIMIT:
        raise ValueError(f"the report in {out} is {size / 2**20:.1f} MiB, over the {PUBLISH_LIMIT / 2**20:.0f} MiB "
                         f"kept in {dest}; publish a smaller run")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in files:
        shutil.copy2(p, dest / p.name)
    return [p.name for p in files]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/out/report", help="output folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a bundle folder (default: the shipped one)")
    p.add_argument("--agent", default=None,
                   help=f"an agent to transfer (default: {os.path.relpath(DEFAULT_AGENT, ROOT)} if it exists)")
    p.add_argument("--shards", default="data/heldout",
                   help="real rollout shards for the fidelity benchmark (collected there when it holds none)")
    p.add_argument("--heldout-of", default=None,
                   help="a VAE run: evaluate only the shards its split held out (default: every shard)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_const", const="full", dest="budget", help="larger budgets")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="budget", help="tiny budgets")
    p.add_argument("--publish", action="store_true", help=f"copy the report into {PUBLISHED.relative_to(ROOT)}")
    args = p.parse_args(argv)
    budget = args.budget or "default"
    path = report(args.out, args.model, args.agent, budget, args.shards, args.heldout_of, args.publish)
    print(f"wrote {path}" + (f" and published it to {PUBLISHED.relative_to(ROOT)}" if args.publish else ""))


if __name__ == "__main__":
    main()
