"""The report in smoke mode, with no agent: one folder with report.md, its figures and JSONs."""

import json

from benchmarks import report
from conftest import write_shards


def test_smoke_report_has_every_section_and_says_there_is_no_agent(tmp_path, bundle_path, monkeypatch):
    monkeypatch.setattr(report, "DEFAULT_AGENT", tmp_path / "no_agent.zip")
    shards = write_shards(tmp_path / "rollouts")
    path = report.report(tmp_path / "out", bundle_path, budget="smoke", shards=shards)
    text = path.read_text()
    for section in ("# World-model report", "## Machine", "## Throughput", "## Fidelity", "## Transfer"):
        assert section in text
    assert "No agent yet" in text
    assert "DreamCarRacing-v0" in text and "Latent error by horizon" in text and "Done head" in text
    machine = json.loads((path.parent / "machine.json").read_text())
    assert machine["jax"] in text and machine["git_commit"] in text
    for name in ("throughput.json", "fidelity.json", "latent.png", "frames.png", "reward.png", "done.png",
                 "filmstrip.png", "dream.gif"):
        assert (path.parent / name).stat().st_size > 0
        assert name in text

    published = report.publish_report(path.parent, tmp_path / "published")
    assert "report.md" in published and "dream.gif" in published
    assert (tmp_path / "published" / "report.md").read_text() == text


def test_an_empty_shard_folder_is_filled_with_fresh_real_rollouts_once(tmp_path):
    folder = tmp_path / "heldout"
    report.fresh_rollouts(folder, 2, 30)
    shards = sorted(folder.glob("rollout_*.npz"))
    assert len(shards) == 2
    manifest = json.loads((folder / "manifest.json").read_text())["shards"]
    assert {s["seed"] for s in manifest} == {report.FRESH_SEED} and all(s["steps"] == 30 for s in manifest)
    mtimes = [p.stat().st_mtime_ns for p in shards]
    report.fresh_rollouts(folder, 5, 30)  # a folder with shards is used as it is
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("rollout_*.npz"))] == mtimes
