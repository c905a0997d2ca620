"""VAE training throughput: this project's JAX train step against plain PyTorch, in one run.

`python -m benchmarks.vae_speed` starts one worker process per implementation: PyTorch's
paper VAE (`benchmarks/torch_vae.py`) and this project's (`train.vae.make_train_step`);
same batch size, loss (summed squared error + free-bits KL) and Adam. Each worker compiles and
warms up, then the workers take turns running --steps training steps on one uint8 batch
(converted to float every step, as in training), --rounds times, so load from other jobs hits
all of them alike. Reported per implementation: median and best images/s over rounds, and
CPU ms per image; the ratio is JAX median / PyTorch median (target >= 1.0). Prints a table and
writes JSON (default benchmarks/out/vae_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dreamenv.atomic import atomic_write_bytes
from dreamenv.frames import to_float

TORCH, JAX = "torch", "jax"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vae_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="training steps per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/vae_speed.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "torch" or "jax"
    return p.parse_args(argv)


def make_runner(impl: str, batch_size: int, lr: float):
    """-> run(n): n training steps of `impl` on one random batch, finished when it returns."""
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, 64, 64, 3), dtype=np.uint8)
    if impl == TORCH:
        import torch

        from benchmarks.torch_vae import TorchVAE, make_step

        torch.manual_seed(0)
        step = make_step(TorchVAE(), lr)

        def run(n: int) -> None:
            for _ in range(n):
                step(torch.from_numpy(to_float(batch)))

        return run

    import jax
    import optax

    from dreamenv.vae import VAE, init_vae
    from train.vae import make_train_step

    model = VAE()
    key = jax.random.key(0)
    params = init_vae(model, key)
    state = {"params": params, "opt_state": optax.adam(lr).init(params), "step": 0}
    train_step = make_train_step(model, lr, kl_tolerance=0.5)

    def run(n: int) -> None:
        for _ in range(n):
            state["params"], state["opt_state"], terms = train_step(
                state["params"], state["opt_state"], key, state["step"], to_float(batch))
            state["step"] += 1
        terms["loss"].block_until_ready()

    return run


def worker(impl: str, batch_size: int, lr: float) -> None:
    """Serve rounds over stdin/stdout: read a step count, reply {"seconds", "cpu_seconds"}."""
    run = make_runner(impl, batch_size, lr)
    run(2)  # compile and warm up
    reply = lambda msg: print(json.dumps(msg), flush=True)
    reply({"ready": True})
    for line in sys.stdin:
        wall, cpu = time.perf_counter(), time.process_time()
        run(int(line))
        reply({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu})


class Worker:
    """A worker process for one implementation."""

    def __init__(self, impl: str, args: argparse.Namespace):
        self.impl = impl
        cmd = [sys.executable, "-m", "benchmarks.vae_speed", "--worker", impl,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmarks/vae_speed.py: the {self.impl} worker exited "
                               f"(code {self.proc.wait()}); see its error above")
        return json.loads(line)

    def round(self, steps: int) -> dict:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure(args: argparse.Namespace) -> dict:
    impls = [TORCH, JAX]
    load_before = os.getloadavg()[0]
    workers = [Worker(impl, args) for impl in impls]
    try:
        for w in workers:  # all compiled and warmed up (not timed)
            w.read()
        rounds = {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for w in workers:
                time.sleep(0.2)  # let the previous worker's threads go idle
                rounds[w.impl].append(w.round(args.steps))
    finally:
        for w in workers:
            w.close()
    images = args.steps * args.batch_size
    results = {}
    for impl, rs in rounds.items():
        rates = [images / r["seconds"] for r in rs]
        results[impl] = {
            "images_per_second": statistics.median(rates),
            "best_images_per_second": max(rates),
            "cpu_ms_per_image": 1000 * statistics.median(r["cpu_seconds"] for r in rs) / images,
            "rounds_images_per_second": rates,
        }
    torch_rate = results[TORCH]["images_per_second"]
    return {
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "results": results,
        "ratio_to_torch": {i: results[i]["images_per_second"] / torch_rate for i in impls if i != TORCH},
    }


def print_table(report: dict) -> None:
    print(f"VAE training, batch {report['batch_size']}, {report['rounds']} rounds of "
          f"{report['steps_per_round']} steps (load {report['loadavg_before']:.1f} -> {report['loadavg_after']:.1f})")
    print(f"{'implementation':16s} {'img/s (median)':>15s} {'img/s (best)':>13s} {'CPU ms/img':>11s} {'vs torch':>9s}")
    for impl, r in report["results"].items():
        ratio = report["ratio_to_torch"].get(impl, 1.0)
        print(f"{impl:16s} {r['images_per_second']:15.1f} {r['best_images_per_second']:13.1f} "
              f"{r['cpu_ms_per_image']:11.2f} {ratio:8.2f}x")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch_size, args.lr)
        return 0
    report = measure(args)
    print_table(report)
    atomic_write_bytes(args.out, json.dumps(report, indent=1).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
