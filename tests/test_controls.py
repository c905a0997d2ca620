"""benchmarks.controls: fixed-action returns in the dream and on the real game."""

import json

import numpy as np

from benchmarks import controls
from train.mdnrnn_loss import average_ranks


def test_table_has_every_control_for_every_model(bundle_path, endless_path, tmp_path):
    out = tmp_path / "controls.json"
    result = controls.main(["--model", str(bundle_path), str(endless_path), "--dream-episodes", "4",
                            "--real-episodes", "1", "--steps", "20", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert [r["control"] for r in result["rows"]] == list(controls.CONTROLS)
    for row in result["rows"]:
        assert len(row["dream"]) == 2 and all(np.isfinite(d["mean"]) for d in row["dream"])
        assert np.isfinite(row["real_mean"])
    full_throttle = next(r for r in result["rows"] if r["control"] == "full throttle")
    assert full_throttle["real_mean"] > 0  # 20 steps straight ahead from the start line reach new tiles
    assert len(result["rank_correlation"]) == 2


def test_rank_correlation_handles_ties_and_order():
    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])
    assert controls.rank_correlation([1, 2, 3], [10, 20, 30]) == 1.0
    assert controls.rank_correlation([1, 2, 3], [30, 20, 10]) == -1.0
    assert np.isnan(controls.rank_correlation([1, 2, 3], [5, 5, 5]))
