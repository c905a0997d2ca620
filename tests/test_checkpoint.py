"""Model bundles: exact round trip, atomic replacement, and each documented load error."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from dreamenv.checkpoint import (
    PARAMS_FILE,
    BundleError,
    load_bundle,
    random_bundle,
    save_bundle,
)
from dreamenv.mdnrnn import MDNRNN
from dreamenv.vae import VAE

TINY = dict(vae=VAE(latent_dim=8), mdnrnn=MDNRNN(latent_dim=8, hidden_size=16, num_mixtures=3))


@pytest.fixture(scope="module")
def bundle():
    b = random_bundle(jax.random.key(0), n_start=5, **TINY)
    return b.__class__(**{**b.__dict__, "metadata": {"trained": False, "rollouts": 2}})


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def assert_same(a, b):
    assert a.vae == b.vae and a.mdnrnn == b.mdnrnn and a.frames == b.frames
    assert a.metadata == b.metadata
    np.testing.assert_array_equal(a.start_latents, b.start_latents)
    for x, y in zip(leaves((a.vae_params, a.mdnrnn_params)), leaves((b.vae_params, b.mdnrnn_params)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    assert_same(load_bundle(tmp_path / "m"), bundle)


def test_float16_storage_is_smaller_and_close(tmp_path, bundle):
    save_bundle(tmp_path / "f32", bundle)
    save_bundle(tmp_path / "f16", bundle, dtype="float16")
    size = lambda d: (tmp_path / d / PARAMS_FILE).stat().st_size
    assert size("f16") < 0.6 * size("f32")
    loaded = load_bundle(tmp_path / "f16")
    for x, y in zip(leaves(loaded.mdnrnn_params), leaves(bundle.mdnrnn_params)):
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


def test_save_replaces_and_failed_save_keeps_old(tmp_path, bundle):
    path = tmp_path / "m"
    save_bundle(path, bundle)
    newer = bundle.__class__(**{**bundle.__dict__, "metadata": {"version": 2}})
    save_bundle(path, newer)
    assert load_bundle(path).metadata == {"version": 2}
    broken = bundle.__class__(**{**bundle.__dict__, "metadata": {"bad": object()}})
    with pytest.raises(ValueError, match="nests deeper"):
        save_bundle(path, broken)
    assert load_bundle(path).metadata == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found at .*nowhere"):
        load_bundle(tmp_path / "nowhere")


def test_missing_params_file(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    (tmp_path / "m" / PARAMS_FILE).unlink()
    with pytest.raises(BundleError, match=f"{PARAMS_FILE} is missing"):
        load_bundle(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_params(tmp_path, bundle, damage):
    save_bundle(tmp_path / "m", bundle)
    f = tmp_path / "m" / PARAMS_FILE
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{tmp_path / 'm'}.*truncated or corrupted"):
        load_bundle(tmp_path / "m")


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, match", [
    (dict(mdnrnn__hidden_size=32), r"m: MDN-RNN param .* has shape \(.*16.*\), expected"),
    (dict(format_version=99), "m has format version 99"),
    (dict(format_version=6), r"m has format version 6.*rebuild it with `python -m train.pipeline"),  # an older one
    (dict(vae__channels=7), "m: bad VAE config"),
])
def test_config_errors_name_the_bundle_and_the_fix(tmp_path, bundle, changes, match):
    save_bundle(tmp_path / "m", bundle)
    edit_config(tmp_path / "m", **changes)
    with pytest.raises(BundleError, match=match):
        load_bundle(tmp_path / "m")


def test_bad_config_json(tmp_path, bundle):
    save_bundle(tmp_path / "m", bundle)
    (tmp_path / "m" / "config.json").write_text('{"format_version": 1, ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "m")


def test_metadata_must_be_flat_and_small(tmp_path, bundle):
    with pytest.raises(ValueError, match=r"metadata\['pipeline'\] nests deeper"):
        save_bundle(tmp_path / "m", dataclasses.replace(bundle, metadata={"pipeline": {"base": {"metadata": {}}}}))
    with pytest.raises(ValueError, match="at most 5120"):
        save_bundle(tmp_path / "m", dataclasses.replace(bundle, metadata={"command": "x" * 6000}))
    assert not (tmp_path / "m").exists()  # nothing written
