"""`python -m train.pipeline` from nothing at a tiny scale: real CarRacing-v3 data, VAE, MDN-RNN,
one iteration of iterative training and its agents, then `python -m train.ship` (float16 check,
model card) installing the model into a temp folder; the shipped assets stay untouched."""

import dataclasses
import hashlib
import json

import imageio.v3 as imageio
import numpy as np
import pytest

from dreamenv.checkpoint import CONFIG_FILE, load_bundle
from dreamenv.model import DEFAULT_MODEL
from train import pipeline, ship
from train.config import load_config

TINY = dict(episodes=2, perturbed_episodes=1, offroad_episodes=2, max_steps=60, vae_steps=6, vae_batch=8,
            mdn_steps=20, seq_len=8, workers=2, iterations=1, iter_episodes=1, iter_mdn_steps=5,
            agent_timesteps=1024, eval_episodes=1)
ARGV = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bad_values_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"PipelineConfig.policy \(--policy\) = 'nope': expected one of"):
        dataclasses.replace(pipeline.QUICK, out=tmp_path / "run", policy="nope")
    with pytest.raises(ValueError, match=r"PipelineConfig.iterations \(--iterations\) = -1"):
        dataclasses.replace(pipeline.QUICK, out=tmp_path / "run", iterations=-1)
    with pytest.raises(SystemExit):
        pipeline.main(["--quick", "--out", str(tmp_path / "run"), "--episodes", "0"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="no pipeline.json"):
        ship.main(["--run", str(tmp_path)])


def test_quick_preset_and_flags():
    config = pipeline.cli(pipeline.PipelineConfig, ["--quick", "--iterations", "2"], presets={"quick": pipeline.QUICK},
                          default=pipeline.FULL)
    assert config == dataclasses.replace(pipeline.QUICK, iterations=2)
    assert pipeline.cli(pipeline.PipelineConfig, [], default=pipeline.FULL) == pipeline.FULL
    on_ray = dataclasses.replace(pipeline.FULL, backend="ray", address="auto")  # every collection on the cluster
    collects = [s.config for s in pipeline.stages(on_ray) if isinstance(s.config, pipeline.collect.CollectConfig)]
    assert len(collects) == 4 and all((c.backend, c.address) == ("ray", "auto") for c in collects)


def test_pipeline_from_nothing_then_ship_installs_a_loadable_model(tmp_path):
    out, shipped_before = tmp_path / "run", digest(DEFAULT_MODEL)
    assert pipeline.main(["--quick", "--out", str(out), *ARGV]) == 0
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record["stage_seconds"]) == {"collect", "collect-perturbed", "collect-offroad", "vae", "encode", "mdnrnn",
                                            "iter0-agent", "iter1-collect", "iter1-encode", "iter1-mdnrnn",
                                            "iter1-agent"}
    assert record["config"] == {**pipeline.to_json(pipeline.QUICK), **TINY, "out": str(out)}
    assert record["data"]["rollouts"] == 6 and record["command"].startswith("python -m train.pipeline --quick")
    assert [r["iteration"] for r in record["iterations"]] == [0, 1]
    assert all(r["real"]["episodes"] == 1 and np.isfinite(r["real"]["mean"]) for r in record["iterations"])
    manifest = json.loads((out / "rollouts" / "manifest.json").read_text())["shards"]
    assert [s["policy"] for s in manifest] == ["mix", "mix", "track-perturbed", "ou", "ou",
                                               str(out / "iter0" / "agent" / "agent.zip")]
    assert manifest[-1]["model"] == str(out / "bundle")
    assert load_config(out / "mdnrnn" / "run_config.json", pipeline.mdnrnn.MDNRNNConfig).start_fraction == 0.1

    base, last = load_bundle(out / "bundle"), load_bundle(out / "iter1" / "bundle")
    seen = lambda meta: meta["train_rollouts"] + meta["heldout_rollouts"] + meta["left_out_rollouts"]
    assert seen(base.metadata) == 5 and seen(last.metadata) == 6  # the base model stays
    assert base.metadata["left_out_rollouts"] == 0  # the base model trains on the privileged drivers too
    assert not {"track", "track-perturbed"} & set(last.metadata["train_policies"])  # the iterations' do not
    assert last.metadata["init"] is None and last.metadata["iteration"] == 1  # trained afresh
    assert last.metadata["command"] == record["command"] and last.metadata["git_commit"] == record["git_commit"]
    assert last.metadata["agent_real_episodes"] == 1
    assert len(json.dumps(json.loads((out / "iter1" / "bundle" / CONFIG_FILE).read_text())["metadata"])) <= 5 * 1024

    stamp = (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns
    assert pipeline.main(["--quick", "--out", str(out), *ARGV]) == 0  # a rerun resumes: nothing redone
    assert (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns == stamp
    again = json.loads((out / "pipeline.json").read_text())["stage_seconds"]
    assert all(again[k] >= record["stage_seconds"][k] for k in again)  # resumes add up

    dest, card = tmp_path / "assets" / "default", tmp_path / "assets" / "MODEL_CARD.md"
    assert ship.main(["--run", str(out), "--dest", str(dest), "--card", str(card), "--eval-frames", "16",
                      "--strip-steps", "30"]) == 0
    shipped = load_bundle(dest)
    assert shipped.metadata == last.metadata and shipped.mdnrnn == last.mdnrnn
    text = card.read_text()
    assert "| vae_mse_per_pixel |" in text and "| mse_ratio_to_persistence |" in text
    assert f"`{record['command']}`" in text and "| 1 | 6 |" in text and "a share 0.1 of them" in text
    for png in ("recon.png", "dream.png"):
        assert (card.parent / "card" / png).read_bytes()[:4] == b"\x89PNG"
    strip = imageio.imread(card.parent / "card" / "dream.png")[..., :3] / 255.0
    assert strip.shape[0] == 4 * 2 * 66  # the real row and 3 dreams, 64-pixel frames padded by 1, shown 2x
    dreamed = strip[strip.shape[0] // 4 + 4 : -4]  # the dreams' rows: decoded frames, not saturated ones
    assert np.mean((dreamed > 0.05) & (dreamed < 0.95)) > 0.3
    with pytest.raises(SystemExit, match="no finished model of iteration 2"):
        ship.main(["--run", str(out), "--iteration", "2", "--dest", str(dest), "--card", str(card)])
    assert digest(DEFAULT_MODEL) == shipped_before
