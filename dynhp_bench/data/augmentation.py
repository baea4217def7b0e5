"""Per-channel normalisation and training augmentation on batches of flat image rows, never per sample in Python.

Images are rows [N, C·H·W] in channels × rows × columns order (`data.Dataset`). Normalisation subtracts each
channel's mean and divides by its standard deviation, both measured once over the images trained on. The
augmentation is the usual CIFAR one (He et al. 2016): a random crop of the image padded by 4 pixels, which is a
shift by −4…4 rows and columns with zeros coming in (after normalisation, zero is the channel's mean), then a
horizontal flip with probability 1/2. Every draw comes from the generator passed in, the run's, so a run is
reproducible for its seed and continues identically from a checkpoint.
"""

from __future__ import annotations

import torch

PAD = 4
STATISTICS_CHUNK = 2_000  # images per float64 chunk when measuring the channels (bounded memory)


def channel_statistics(rows: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's mean and standard deviation (population, float64 sums) over images `rows` [N, C·H·W]; a
    channel that never varies gets a standard deviation of 1, so normalising it only centres it."""
    channels = shape[0]
    total = torch.zeros(channels, dtype=torch.float64, device=rows.device)
    squares = torch.zeros(channels, dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[0], STATISTICS_CHUNK):
        chunk = rows[start : start + STATISTICS_CHUNK].reshape(-1, channels, shape[1] * shape[2]).double()
        total += chunk.sum(dim=(0, 2))
        squares += chunk.square().sum(dim=(0, 2))
    count = max(rows.shape[0], 1) * shape[1] * shape[2]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.to(rows.dtype), std.to(rows.dtype)


def column_statistics(rows: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`channel_statistics` repeated over each channel's columns: vectors [C·H·W] such that
    ``(rows - mean) / std`` normalises every column of a batch by its channel's numbers (and a selection of
    columns by the same selection of both vectors)."""
    mean, std = channel_statistics(rows, shape)
    per_channel = shape[1] * shape[2]
    return mean.repeat_interleave(per_channel), std.repeat_interleave(per_channel)


def augmented(rows: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """A batch `rows` [B, C·H·W], each image shifted by its own draw of −PAD…PAD rows and columns (zeros fill what
    comes in) and mirrored left to right with probability 1/2; the draws come from `generator`, on its device."""
    n = rows.shape[0]
    channels, height, width = shape
    device = rows.device
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=generator.device).to(device)
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(device)
    padded = torch.nn.functional.pad(rows.reshape(n, channels, height, width), (PAD, PAD, PAD, PAD))
    padded_height, padded_width = height + 2 * PAD, width + 2 * PAD
    # Output pixel (y, x) reads padded pixel (y + dy, x + dx); a flip reads column W − 1 − x instead of x. One
    # gather over the flat padded image (its position (c, y, x) is c·H'·W' + y·W' + x) does every image at once.
    ys = torch.arange(height, device=device).unsqueeze(0) + offsets[:, :1]
    xs = torch.arange(width, device=device).unsqueeze(0) + offsets[:, 1:]
    xs = torch.where(flips.unsqueeze(1), xs.flip(1), xs)
    index = (
        torch.arange(channels, device=device).view(1, channels, 1, 1) * (padded_height * padded_width)
        + ys.view(n, 1, height, 1) * padded_width
        + xs.view(n, 1, 1, width)
    )
    return padded.reshape(n, -1).gather(1, index.reshape(n, -1))
