"""benchmarks.transfer: dream scores at each τ against the real score, as JSON and a markdown table."""

import json

import pytest

from benchmarks.transfer import main, transfer
from train import controller_policy as controller


@pytest.fixture(scope="module")
def agent_path(bundle_path, tmp_path_factory):
    """A controller for the tiny bundle's 24-d "zh" observations (any agent file will do)."""
    return controller.save_controller(tmp_path_factory.mktemp("agents") / "c.npz", controller.init_params(24))


def test_smoke_mode_writes_json_with_the_promised_keys(agent_path, bundle_path, tmp_path):
    out = tmp_path / "transfer.json"
    main(["--agent", str(agent_path), "--model", str(bundle_path), "--smoke", "--temperatures", "0.5", "1.3",
          "--workers", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["temperature"] for r in result["rows"]] == [0.5, 1.3]
    for row in result["rows"]:
        assert set(row) == {"temperature", "dream_mean", "dream_std", "real_mean", "real_std", "gap"}
        assert row["gap"] == pytest.approx(row["dream_mean"] - row["real_mean"])
        assert (row["real_mean"], row["real_std"]) == (result["real"]["mean"], result["real"]["std"])
    assert len(result["real"]["returns"]) == result["real_episodes"] == 1
    lines = result["markdown"].splitlines()
    assert lines[0].startswith("| τ |") and lines[2].startswith("| 0.5 |") and lines[3].startswith("| 1.3 |")


def test_bad_temperatures_are_named(agent_path, bundle_path):
    for bad, message in (([], "temperatures is empty"), ([1.0, -0.5], "temperature must be a finite number")):
        with pytest.raises(ValueError, match=message):
            transfer(agent=str(agent_path), model=str(bundle_path), temperatures=bad, real_episodes=1,
                     dream_episodes=2, seed=0, workers=0)
