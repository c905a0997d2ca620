"""How much of what a good driver sees does each exploration policy cover?

`python -m benchmarks.policy_coverage` collects N episodes per policy with the real collection
code (train/collect.py, into a temporary folder) and reports, per policy, means over episodes of:
tiles visited (share of the track), share of steps with positive reward, episode return, share
of steps with all wheels on grass, and speed |linearVelocity| (episode mean and 90th percentile).
Prints a table and writes JSON (default benchmarks/out/policy_coverage.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dreamenv.shards import atomic_write
from train import collect
from train.collect import CollectConfig, default_workers
from train.policies import POLICIES

COLUMNS = {  # report key -> (header, format)
    "tiles_share": ("tiles %", "{:.0%}"),
    "tiles_visited": ("tiles", "{:.0f}"),
    "positive_reward_share": ("r>0 %", "{:.1%}"),
    "return": ("return", "{:.0f}"),
    "return_std": ("±", "{:.0f}"),
    "grass_share": ("grass %", "{:.0%}"),
    "speed_mean": ("speed", "{:.0f}"),
    "speed_p90": ("p90", "{:.0f}"),
    "steps": ("steps", "{:.0f}"),
}


def summarize(entries: list[dict]) -> dict:
    """Manifest entries of one policy -> means over episodes (and the mix's choices)."""
    def mean(key):
        return float(np.mean([e[key] for e in entries]))

    report = {key: mean(key) for key in COLUMNS if key in entries[0]}
    report["tiles_share"] = float(np.mean([e["tiles_visited"] / e["track_tiles"] for e in entries]))
    report["return_std"] = float(np.std([e["return"] for e in entries]))
    report["episodes"] = len(entries)
    choices = Counter(e["params"].get("choice") for e in entries if "choice" in e["params"])
    if choices:
        report["choices"] = dict(choices)
    return report


def format_table(reports: dict[str, dict]) -> str:
    header = ["policy", *(h for h, _ in COLUMNS.values())]
    rows = [[name, *(fmt.format(r[key]) for key, (_, fmt) in COLUMNS.items())] for name, r in reports.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [header, *rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policy_coverage", description=__doc__.split("\n")[0])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), help="registry names")
    p.add_argument("--episodes", type=int, default=4, help="episodes per policy")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1000, help="base seed (away from the collection's 0)")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/policy_coverage.json"))
    args = p.parse_args(argv)

    reports = {}
    for name in args.policies:
        with tempfile.TemporaryDirectory() as tmp:
            result = collect.run(CollectConfig(out=Path(tmp), policy=name, seed=args.seed, max_steps=args.max_steps,
                                               episodes=args.episodes, workers=args.workers))
        if result.failures:
            raise RuntimeError(f"benchmarks/policy_coverage.py: policy '{name}' failed: {result.failures}")
        reports[name] = summarize(list(result.entries.values()))
    print(format_table(reports))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "policies": reports}
    atomic_write(args.out, lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
