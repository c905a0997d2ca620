"""The one preprocessing: crop the dashboard, exact area resize to 64×64, uint8."""

import numpy as np
import pytest

from dreamenv.frames import FrameConfig, preprocess


def exact_area_average(frame, config=FrameConfig()):
    """Independent reference: upsample by the output size, then average blocks (float64)."""
    crop = frame[config.crop_top : config.crop_bottom].astype(np.float64)
    h, w, s = crop.shape[0], crop.shape[1], config.size
    big = np.repeat(np.repeat(crop, s, 0), s, 1)
    return big.reshape(s, h, s, w, 3).mean((1, 3))


@pytest.mark.parametrize("config", [FrameConfig(), FrameConfig(crop_top=0, crop_bottom=96, size=32)])
def test_matches_exact_area_average(config):
    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = preprocess(frame, config)
    assert out.shape == (config.size, config.size, 3) and out.dtype == np.uint8
    assert np.abs(out - exact_area_average(frame, config)).max() <= 0.5 + 1e-4


def test_batches_equal_single_frames_and_dashboard_is_cropped():
    frames = np.random.default_rng(1).integers(0, 256, (2, 3, 96, 96, 3), dtype=np.uint8)
    out = preprocess(frames)
    assert out.shape == (2, 3, 64, 64, 3)
    np.testing.assert_array_equal(out[1, 2], preprocess(frames[1, 2]))
    dashboard_changed = frames[0, 0].copy()
    dashboard_changed[84:] = 0
    np.testing.assert_array_equal(preprocess(dashboard_changed), out[0, 0])


@pytest.mark.parametrize("bad", [np.zeros((96, 96, 3), np.float32), np.zeros((64, 64, 3), np.uint8)])
def test_bad_frames_raise(bad):
    with pytest.raises(ValueError, match=r"expected uint8 \[\.\.\., 96, 96, 3\]"):
        preprocess(bad)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="crop rows"):
        FrameConfig(crop_top=90, crop_bottom=80)
