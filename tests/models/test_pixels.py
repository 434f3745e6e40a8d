"""``Levels``: uint8 pixels to the model's floats, exactly the processor's float32 formula."""

from __future__ import annotations

import numpy as np

from consumers.models.pixels import Levels

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def test_every_level_of_every_channel_is_the_float32_formula() -> None:
    levels = Levels.of(1 / 255, MEAN, STD)
    # One image holding all 256 levels in each channel, at different positions.
    rgb = np.stack([np.roll(np.arange(256, dtype=np.uint8), 17 * c) for c in range(3)], -1)
    pixels = levels(rgb.reshape(16, 16, 3))
    assert pixels.shape == (3, 16, 16)
    assert pixels.dtype == np.float32
    assert pixels.flags.c_contiguous
    for c in range(3):
        expected = (
            rgb[:, c].astype(np.float32) * np.float32(1 / 255) - np.float32(MEAN[c])
        ) / np.float32(STD[c])
        assert np.array_equal(pixels[c].reshape(-1), expected)


def test_scalar_mean_and_std_apply_to_every_channel() -> None:
    rgb = np.full((2, 3, 3), 255, dtype=np.uint8)
    pixels = Levels.of(1 / 255, 0.5, 0.5)(rgb)
    assert np.array_equal(pixels, np.ones((3, 2, 3), dtype=np.float32))
