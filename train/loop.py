"""The resumable training loop that the VAE, the MDN-RNN and the controller share.

    class MyTrainer(Trainer):                     # what one run trains
        def state(self) -> dict: ...              # checkpointable pytree with an int "step"
        def load(self, state: dict): ...          # restored from the newest good checkpoint
        def update(self, step: int) -> dict: ...  # one update (step = updates done before it) -> loss terms
        def evaluate(self, step: int) -> dict: ...  # a metrics record for history (a host sync)

    history = fit(trainer, out, LoopConfig(steps=20_000, ckpt_every=1000, eval_every=2000), name="mdnrnn")

`fit` restores OUT/checkpoint (atomic files, `train.trainstate`), trims OUT/metrics.json's history
to the restored step, runs the remaining updates under a tqdm bar, and every `log_every` updates
(and at each save or eval) reads the terms back and stops with FloatingPointError on a NaN/inf
loss; a state with non-finite leaves is never saved, so the last good checkpoint stays. At each
eval it appends {"step", **trainer.evaluate(step), "seconds"} to the history and rewrites
OUT/metrics.json ({**info, "history": [...]}) atomically. Rerun, it carries on where it stopped;
a finished run returns its history without updating.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from dreamenv.atomic import atomic_write_bytes
from train.trainstate import TrainCheckpoint


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int  # updates in all
    ckpt_every: int
    eval_every: int
    log_every: int = 50  # updates between reads of the loss (a host sync) and progress updates


class Trainer:
    """What `fit` trains: see the module docstring."""

    def state(self) -> dict:
        raise NotImplementedError

    def load(self, state: dict) -> None:
        raise NotImplementedError

    def update(self, step: int) -> dict:
        raise NotImplementedError

    def evaluate(self, step: int) -> dict:
        raise NotImplementedError


def read_history(out: Path, step: int) -> list[dict]:
    """OUT/metrics.json's history up to `step` (what a run restored at `step` had recorded)."""
    path = out / "metrics.json"
    history = json.loads(path.read_text())["history"] if path.is_file() and step else []
    return [h for h in history if h["step"] <= step]


def write_metrics(out: Path, info: dict, history: list[dict]) -> None:
    atomic_write_bytes(out / "metrics.json", json.dumps({**info, "history": history}, indent=1).encode())


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(x))) for x in jax.tree_util.tree_leaves(jax.device_get(tree)))


def fit(trainer: Trainer, out: Path, loop: LoopConfig, name: str, info: dict | None = None) -> list[dict]:
    """Train `trainer` for loop.steps updates in all, resuming from OUT/checkpoint. -> the metrics history."""
    ckpt = TrainCheckpoint(out / "checkpoint")
    restored = ckpt.restore(trainer.state())
    if restored is not None:
        trainer.load(restored)
    step = int(trainer.state()["step"])
    history, info = read_history(out, step), info or {}
    bar = tqdm(total=loop.steps, initial=step, desc=name, dynamic_ncols=True)
    t0 = time.perf_counter()
    while step < loop.steps:
        terms = trainer.update(step)
        step += 1
        bar.update(1)
        last = step == loop.steps
        save, run_eval = step % loop.ckpt_every == 0 or last, step % loop.eval_every == 0 or last
        if step % loop.log_every == 0 or save or run_eval:
            terms = {k: float(v) for k, v in terms.items()}
            if not np.isfinite(terms["loss"]):
                raise FloatingPointError(
                    f"{name} loss became {terms['loss']} at step {step}; stopped. The last good checkpoint "
                    f"(step {ckpt.steps()[-1] if ckpt.steps() else 'none'}) in {ckpt.folder} is kept: "
                    f"lower the learning rate and rerun to resume from it")
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
        if save:
            state = trainer.state()
            if not all_finite(state):
                raise FloatingPointError(f"{name} state became non-finite by step {step}; "
                                         f"the last good checkpoint in {ckpt.folder} is kept")
            ckpt.save(state)
        if run_eval:
            history.append({"step": step, "train": terms, **trainer.evaluate(step),
                            "seconds": round(time.perf_counter() - t0, 3)})
            write_metrics(out, info, history)
            tqdm.write(f"{name} step {step}: " + json.dumps({k: v for k, v in history[-1].items()
                                                              if isinstance(v, (int, float))}))
            t0 = time.perf_counter()
    bar.close()
    return history
