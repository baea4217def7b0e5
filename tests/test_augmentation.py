"""Normalisation and augmentation against hand-computed numbers and a per-image reference, and their draws
reproducible from the run's generator."""

from __future__ import annotations

import pytest
import torch

from dynhp_bench.data.augmentation import PAD, augmented, channel_statistics, column_statistics

SHAPE = (3, 6, 5)


def _reference(image: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """One image [C, H, W] shifted so that output (y, x) shows input (y + dy, x + dx), zero outside, then
    mirrored left to right when `flip`: the slow, obvious way."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    for y in range(height):
        for x in range(width):
            sy, sx = y + dy, x + dx
            if 0 <= sy < height and 0 <= sx < width:
                out[:, y, x] = image[:, sy, sx]
    return out.flip(2) if flip else out


def test_channel_statistics_and_normalisation_by_hand() -> None:
    # Two images of 1 × 2 pixels and 2 channels: channel 0 holds 1, 3, 5, 7; channel 1 is constant 0.5.
    rows = torch.tensor([[1.0, 3.0, 0.5, 0.5], [5.0, 7.0, 0.5, 0.5]])
    mean, std = channel_statistics(rows, (2, 1, 2))
    assert mean.tolist() == pytest.approx([4.0, 0.5])
    assert std.tolist() == pytest.approx([5.0**0.5, 1.0])  # population std of 1,3,5,7 is √5; constant → 1
    column_mean, column_std = column_statistics(rows, (2, 1, 2))
    assert column_mean.tolist() == pytest.approx([4.0, 4.0, 0.5, 0.5])
    out = (rows - column_mean) / column_std
    assert out[:, :2].flatten().tolist() == pytest.approx([(v - 4) / 5**0.5 for v in (1, 3, 5, 7)])
    assert out[:, 2:].abs().max() == 0


def test_normalised_channels_have_mean_0_and_std_1_whatever_the_chunking() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(4_500, 3 * 4 * 4, generator=generator) * torch.tensor([1.0, 0.5, 0.1]).repeat_interleave(16)
    mean, std = column_statistics(rows, (3, 4, 4))
    by_channel = ((rows - mean) / std).reshape(-1, 3, 16).transpose(0, 1).reshape(3, -1)
    assert by_channel.mean(1).abs().max() < 1e-5
    assert (by_channel.std(1, correction=0) - 1).abs().max() < 1e-5


def test_augmentation_matches_the_per_image_reference_with_the_same_draws() -> None:
    n = 64
    rows = torch.arange(1, n * 90 + 1, dtype=torch.float32).reshape(n, 90)  # every pixel distinct and non-zero
    out = augmented(rows, SHAPE, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)  # the draws, in the order augmented makes them
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=replay)
    flips = torch.rand(n, generator=replay) < 0.5
    images = rows.reshape(n, *SHAPE)
    for i in range(n):
        dy, dx = int(offsets[i, 0]) - PAD, int(offsets[i, 1]) - PAD
        expected = _reference(images[i], dy, dx, bool(flips[i]))
        assert torch.equal(out[i].reshape(SHAPE), expected), i
    assert 0 < int(flips.sum()) < n and len({tuple(o) for o in offsets.tolist()}) > 10


def test_a_crop_is_a_shift_with_zeros_coming_in_and_a_flip_mirrors() -> None:
    image = torch.arange(1, 91, dtype=torch.float32).reshape(SHAPE)
    shifted = _reference(image, 4, -2, False)
    assert shifted[:, 2:].abs().max() == 0 and shifted[:, :, :2].abs().max() == 0  # 4 rows, 2 columns came in
    assert torch.equal(shifted[:, :2, 2:], image[:, 4:, :3])
    assert torch.equal(_reference(image, 0, 0, True), image.flip(2))
    # Among enough draws some image is neither shifted nor flipped, and one is only flipped: both exact.
    rows = image.reshape(1, -1).repeat(400, 1)
    out = augmented(rows, SHAPE, torch.Generator().manual_seed(0)).reshape(400, *SHAPE)
    assert any(torch.equal(o, image) for o in out) and any(torch.equal(o, image.flip(2)) for o in out)
    assert out.sum(dim=(1, 2, 3)).le(image.sum()).all(), "pixels only leave (zeros come in), never duplicate"


def test_augmentation_is_reproducible_for_a_seed_and_differs_between_seeds() -> None:
    rows = torch.rand(32, 90, generator=torch.Generator().manual_seed(1))
    first = augmented(rows, SHAPE, torch.Generator().manual_seed(5))
    again = augmented(rows, SHAPE, torch.Generator().manual_seed(5))
    other = augmented(rows, SHAPE, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    generator = torch.Generator().manual_seed(5)
    augmented(rows, SHAPE, generator)
    assert not torch.equal(augmented(rows, SHAPE, generator), first), "the generator moves on batch after batch"
