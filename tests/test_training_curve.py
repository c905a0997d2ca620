"""benchmarks.training_curve at a tiny scale: one PPO run scored at two lengths (resumed, not
retrained), the CMA-ES controller, the report, the plot, the checks, and a rerun that keeps them."""

import json

import pytest

from benchmarks import training_curve
from train.agent_config import AgentConfig
from train.controller import ControllerConfig

AGENT = AgentConfig(envs=16, n_steps=32, batch_size=128, epochs=1, temperature=0.0, max_steps=30)
CONTROLLER = ControllerConfig(population=4, rollouts=2, steps=30, temperature=0.0, eval_every=1, eval_rollouts=4,
                              max_steps=30)


def test_points_resume_one_run_and_the_report_checks_them(endless_path, tmp_path):
    config = training_curve.CurveConfig(model=endless_path, out=tmp_path / "curve", steps=(2048, 1024), seeds=(0,),
                                        real_episodes=1, generations=2, workers=0)
    report = training_curve.run(config, AGENT, CONTROLLER)
    assert json.loads((config.out / "training_curve.json").read_text()) == report
    assert (config.out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    rows = report["ppo"]["0"]
    assert [r["steps"] for r in rows] == [1024, 2048] and all(r["real"]["episodes"] == 1 for r in rows)
    state = json.loads((config.out / "ppo_seed0" / "state.json").read_text())
    assert state["timesteps"] == 2048  # the 2048-step point continued the 1024-step run
    assert report["cmaes"]["generations"] == 2 and report["cmaes"]["real"]["episodes"] == 1
    ratio = report["checks"]["longest_over_best_shorter"]["0"]
    best = rows[0]["real"]["mean"]
    assert ratio == (pytest.approx(rows[1]["real"]["mean"] / best) if best > 0 else None)
    assert report["checks"]["all_at_least_800"] is False  # a random tiny dream teaches no driving
    stamps = {p.name: p.stat().st_mtime_ns for p in (config.out / "points").iterdir()}
    assert training_curve.run(config, AGENT, CONTROLLER) == report  # a rerun keeps every scored point
    assert {p.name: p.stat().st_mtime_ns for p in (config.out / "points").iterdir()} == stamps
    assert "| PPO seed 0 | 2,048 steps |" in training_curve.table(report)


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"CurveConfig.steps \(--steps\)"):
        training_curve.CurveConfig(steps=(0,))
