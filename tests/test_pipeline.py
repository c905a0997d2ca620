"""`python -m train.pipeline` end to end at a tiny scale: real CarRacing-v3 data to a bundle."""

import json

from dreamenv.checkpoint import load_bundle
from train import pipeline

TINY = ["--episodes", "2", "--max-steps", "60", "--vae-steps", "6", "--vae-batch", "8",
        "--mdn-steps", "20", "--seq-len", "8", "--workers", "2"]


def test_pipeline_builds_a_loadable_bundle_and_reruns_as_a_no_op(tmp_path):
    out = tmp_path / "run"
    assert pipeline.main(["--quick", "--out", str(out), *TINY]) == 0
    bundle = load_bundle(out / "bundle")
    assert bundle.metadata["trained"] and bundle.metadata["train_rollouts"] == 1
    assert bundle.start_latents.shape == (1, 32)  # post-zoom frames of the training rollout
    record = bundle.metadata["pipeline"]
    assert set(record["stage_seconds"]) == {"collect", "vae", "encode", "mdnrnn"}
    assert json.loads((out / "pipeline.json").read_text())["settings"]["episodes"] == 2
    mtime = (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns
    assert pipeline.main(["--quick", "--out", str(out), *TINY]) == 0
    assert (out / "rollouts" / "rollout_000000.npz").stat().st_mtime_ns == mtime
