"""train.provenance: which code made a run."""

import subprocess

from train import provenance


def test_git_state_names_this_checkout_and_says_unknown_outside_one(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.ROOT, capture_output=True, text=True).stdout.strip()
    state = provenance.git_state()
    assert state["git_commit"] == head and isinstance(state["git_uncommitted_changes"], bool)
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a git checkout
    assert provenance.git_state() == {"git_commit": "unknown", "git_uncommitted_changes": None}
