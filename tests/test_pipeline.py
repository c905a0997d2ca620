"""`python -m train.pipeline` end to end at a tiny scale: real CarRacing-v3 data to a bundle,
then `python -m train.ship` (float16 check, model card) on its output."""

import json

import imageio.v3 as imageio
import jax
import numpy as np
import pytest

from dreamenv.checkpoint import load_bundle
from train import adopt, pipeline, ship

TINY = ["--episodes", "2", "--perturbed-episodes", "1", "--max-steps", "60", "--vae-steps", "6", "--vae-batch", "8",
        "--mdn-steps", "20", "--seq-len", "8", "--workers", "2"]


def test_pipeline_builds_a_loadable_bundle_and_reruns_as_a_no_op(tmp_path):
    out = tmp_path / "run"
    assert pipeline.main(["--quick", "--out", str(out), *TINY]) == 0
    bundle = load_bundle(out / "bundle")
    assert bundle.metadata["trained"]
    train_rollouts = bundle.metadata["train_rollouts"]
    assert train_rollouts + bundle.metadata["heldout_rollouts"] == 3 and train_rollouts >= 1
    assert bundle.start_latents.shape == (train_rollouts, 32)  # the first frame of each training rollout
    record = bundle.metadata["pipeline"]
    assert set(record["stage_seconds"]) == {"collect", "collect-perturbed", "vae", "encode", "mdnrnn"}
    assert record["data"]["rollouts"] == 3 and 3 <= record["data"]["frames"] <= 180
    manifest = json.loads((out / "rollouts" / "manifest.json").read_text())["shards"]
    assert [s["policy"] for s in manifest] == ["mix", "mix", "track-perturbed"]
    assert json.loads((out / "pipeline.json").read_text())["settings"]["episodes"] == 2
    mtime = (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns
    assert pipeline.main(["--quick", "--out", str(out), *TINY]) == 0
    assert (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns == mtime
    rerun = load_bundle(out / "bundle").metadata["pipeline"]["stage_seconds"]
    assert all(rerun[k] >= record["stage_seconds"][k] for k in rerun)  # resumes add up

    # iterative training on top: agent -> its rollouts -> fine-tuned MDN-RNN -> new agent
    assert pipeline.main(["--quick", "--out", str(out), *TINY, "--iterations", "1", "--iter-episodes", "1",
                          "--iter-mdn-steps", "5", "--agent-timesteps", "1024", "--eval-episodes", "1"]) == 0
    done = json.loads((out / "pipeline.json").read_text())
    assert [r["iteration"] for r in done["iterations"]] == [0, 1]
    assert all(r["real"]["episodes"] == 1 and np.isfinite(r["real"]["mean"]) for r in done["iterations"])
    assert {"iter0-agent", "iter1-collect", "iter1-encode", "iter1-mdnrnn", "iter1-agent"} <= set(done["stage_seconds"])
    last = json.loads((out / "rollouts" / "manifest.json").read_text())["shards"][-1]
    assert (last["episode"], last["policy"], last["model"]) == (3, str(out / "iter0" / "agent" / "agent.zip"),
                                                                str(out / "bundle"))
    iterated = load_bundle(out / "iter1" / "bundle").metadata
    assert iterated["train_rollouts"] + iterated["heldout_rollouts"] == 4
    assert load_bundle(out / "bundle").metadata["train_rollouts"] == train_rollouts  # the base model stays

    dest, card = tmp_path / "assets" / "default", tmp_path / "assets" / "MODEL_CARD.md"
    assert ship.main(["--run", str(out), "--iteration", "1", "--dest", str(dest), "--card", str(card),
                      "--eval-frames", "16", "--strip-steps", "30"]) == 0
    shipped = load_bundle(dest)
    assert shipped.metadata == load_bundle(out / "iter1" / "bundle").metadata and shipped.mdnrnn == bundle.mdnrnn
    assert shipped.metadata["iteration"] == 1 and shipped.metadata["pipeline"]["iterations"] == done["iterations"]
    text = card.read_text()
    assert "| vae_mse_per_pixel |" in text and "| mse_ratio_to_persistence |" in text
    assert "model of\n  iteration 1" in text and "| 1 | 4 |" in text and "--iteration 1" in text
    with pytest.raises(SystemExit, match="no bundle at"):
        ship.main(["--run", str(out), "--iteration", "2", "--dest", str(dest), "--card", str(card)])
    for png in ("recon.png", "dream.png"):
        assert (card.parent / "card" / png).read_bytes()[:4] == b"\x89PNG"
    strip = imageio.imread(card.parent / "card" / "dream.png")[..., :3] / 255.0
    assert strip.shape[0] == 4 * 2 * 66  # the real row and 3 dreams, 64-pixel frames padded by 1, shown 2x
    dreamed = strip[strip.shape[0] // 4 + 4 : -4]  # the dreams' rows: decoded frames, not saturated ones
    assert np.mean((dreamed > 0.05) & (dreamed < 0.95)) > 0.3

    # the sample-flag fine-tune of iteration 1, its agent, and shipping it
    with pytest.raises(SystemExit, match="--final-from 2: expected an iteration in 0..--iterations"):
        pipeline.main(["--quick", "--out", str(out), *TINY, "--iterations", "1", "--final-from", "2"])
    assert pipeline.main(["--quick", "--out", str(out), *TINY, "--iterations", "1", "--iter-episodes", "1",
                          "--iter-mdn-steps", "5", "--agent-timesteps", "1024", "--eval-episodes", "1",
                          "--final-from", "1", "--final-mdn-steps", "5"]) == 0
    record = json.loads((out / "pipeline.json").read_text())
    assert {"final-mdnrnn", "final-agent"} <= set(record["stage_seconds"]) and record["final_from"] == 1
    assert record["final"]["iteration"] == "final" and np.isfinite(record["final"]["real"]["mean"])
    final = load_bundle(out / "final" / "bundle")
    assert final.mdnrnn.sample_flag and final.metadata["iteration"] == "final"
    assert final.metadata["mdnrnn_args"]["init"] == str(out / "iter1" / "bundle")
    assert ship.main(["--run", str(out), "--iteration", "final", "--dest", str(dest), "--card", str(card),
                      "--eval-frames", "16", "--strip-steps", "30"]) == 0
    text = card.read_text()
    assert "--iteration final" in text and "| mse_ratio_to_persistence (flag 1) |" in text
    assert "given the sample flag, trained on all\n  the data" in text and "| final | 4 |" in text
    assert "mean path trained alone (`--freeze-sampled`)" in text

    # a run that starts from a trained model and its agent (--base, --base-agent: train/adopt.py)
    source, driver = out / "iter1" / "bundle", out / "iter1" / "agent" / "agent.zip"
    again = tmp_path / "again"
    args = ["--quick", "--out", str(again), *TINY, "--iter-episodes", "1", "--agent-timesteps", "1024",
            "--eval-episodes", "1", "--final-mdn-steps", "5"]
    with pytest.raises(SystemExit, match="pass --base BUNDLE too"):
        pipeline.main([*args, "--base-agent", str(driver)])
    with pytest.raises(SystemExit, match="use it with --iterations 0"):
        pipeline.main([*args, "--base", str(source), "--base-agent", str(driver), "--iterations", "1"])
    assert pipeline.main([*args, "--base", str(source), "--base-agent", str(driver), "--final-from", "0",
                          "--final-rollouts", "1", "--final-policy", "ou", "--final-reward-input",
                          "--final-start-fraction", "0.5"]) == 0
    record = json.loads((again / "pipeline.json").read_text())
    assert set(record["stage_seconds"]) == {"collect", "collect-perturbed", "base", "base-collect", "encode",
                                            "final-collect", "final-encode", "final-dream", "final-mdnrnn",
                                            "final-agent"}
    driven, wandered = json.loads((again / "rollouts" / "manifest.json").read_text())["shards"][-2:]
    assert (driven["episode"], driven["policy"], driven["model"]) == (3, str(driver), str(source))
    assert (wandered["episode"], wandered["policy"]) == (4, "ou")  # for the final model alone, numbered last
    base = load_bundle(again / "bundle")
    assert base.metadata["base"]["bundle"] == str(source) and base.metadata["base"]["metadata"]["iteration"] == 1
    dream = load_bundle(again / "final" / "dream" / "bundle")  # the dream's path, fine-tuned from the base first
    assert (dream.metadata["mdnrnn_args"]["init"], dream.metadata["mdnrnn_args"]["start_fraction"]) == (
        str(again / "bundle"), "0.5")
    assert not dream.mdnrnn.sample_flag and dream.metadata["train_rollouts"] + dream.metadata["heldout_rollouts"] == 5
    final = load_bundle(again / "final" / "bundle")
    assert final.mdnrnn.sample_flag and final.metadata["mdnrnn_args"]["init"] == str(again / "final" / "dream" / "bundle")
    assert final.mdnrnn.reward_input and final.metadata["mdnrnn_args"]["freeze_sampled"] == "True"
    assert final.metadata["train_rollouts"] + final.metadata["heldout_rollouts"] == 5
    for got, want in zip(jax.tree_util.tree_leaves(final.vae_params), jax.tree_util.tree_leaves(load_bundle(source).vae_params)):
        np.testing.assert_array_equal(got, want)  # the base's VAE, not retrained
    stamp = (again / "bundle" / "params.msgpack").stat().st_mtime_ns
    assert adopt.main(["--bundle", str(source), "--run", str(again)]) == 0  # already adopted: nothing to do
    assert (again / "bundle" / "params.msgpack").stat().st_mtime_ns == stamp
    assert ship.main(["--run", str(again), "--iteration", "final", "--dest", str(dest), "--card", str(card),
                      "--eval-frames", "16", "--strip-steps", "30"]) == 0
    text = card.read_text()
    assert record["base"]["bundle"] == str(source) and record["base"]["metadata"]["iteration"] == 1
    assert "(built by `python -m train.pipeline --quick" in text and "(`--base-agent`) drove 1 new real" in text
    assert {"git_commit", "git_uncommitted_changes"} <= set(record) and record["base"]["git_commit"] != "unknown"
    assert f"as it was at git commit `{record['base']['git_commit']}`" in text  # when it was adopted
    assert f"Base model: `{source}`" in text and "the base model's (`--base`) MDN-RNN (its dream path fine-tuned as above) given the sample flag" in text
    assert "row \"final\"; the data includes 1 rollout of `ou` collected for it alone, `--final-rollouts`)" in text
    assert "| final | 5 |" in text and "--base-agent" in text and record["base_agent"] == str(driver)
    assert "given the sample flag and the reward input" in text and "(`--reward-input`" in text
    assert "a share 0.5 of the windows\n  starting at an episode's first step" in text and "stage `final-dream`" in text
    assert "fine-tuned on windows from episode starts (above), so most dreams zoom in on time" in text
