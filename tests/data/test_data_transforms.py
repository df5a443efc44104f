import numpy as np
import pytest
import torch

from adaptvid.data import VideoTransform, spatial_crops
from adaptvid.data.transforms import (CLIP_MEAN, CLIP_STD, random_resized_box,
                                      short_side_resize, to_tensor)


def three_squares(height=60, width=180, frames=4):
    """Red | green | blue thirds along the longer side."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    if width >= height:
        third = width // 3
        for c in range(3):
            clip[:, :, c * third:(c + 1) * third, c] = 255
    else:
        third = height // 3
        for c in range(3):
            clip[:, c * third:(c + 1) * third, :, c] = 255
    return clip


def dominant_channels(crops):
    """Which colour channel is strongest in each crop (uint8-like input)."""
    return [int(crop.float().mean(dim=(0, 2, 3)).argmax()) for crop in crops]


@pytest.mark.parametrize("train", [True, False])
def test_constant_clip_normalises_to_exact_value(train):
    colour = (200, 100, 50)
    clip = np.empty((5, 48, 64, 3), np.uint8)
    clip[:] = colour
    out = VideoTransform(32, CLIP_MEAN, CLIP_STD, train=train)(clip, rng=np.random.default_rng(0))
    assert out.shape == (3, 5, 32, 32) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip(colour, CLIP_MEAN, CLIP_STD)]
    for c in range(3):
        assert torch.allclose(out[c], torch.full_like(out[c], expected[c]), atol=1e-6)
    assert abs(expected[0] - 1.12742) < 1e-5  # (200/255 - 0.48145) / 0.26863


def test_train_crop_is_shared_by_all_frames_and_random_across_items():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    clip = np.repeat(image, 6, axis=0)
    transform = VideoTransform(32, CLIP_MEAN, CLIP_STD, train=True)
    outputs = [transform(clip, rng=np.random.default_rng(seed)) for seed in range(5)]
    for out in outputs:
        for t in range(1, 6):
            assert torch.equal(out[:, t], out[:, 0])  # one crop for the whole clip
    assert not torch.equal(outputs[0], outputs[1])  # but a different one per draw
    again = transform(clip, rng=np.random.default_rng(0))
    assert torch.equal(again, outputs[0])  # and reproducible from the generator


def test_horizontal_flip_only_when_enabled():
    clip = three_squares(60, 60, frames=2)  # non-symmetric left/right
    full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = VideoTransform(30, (0, 0, 0), (1, 1, 1), train=True, **full)
    flipping = VideoTransform(30, (0, 0, 0), (1, 1, 1), train=True, hflip=True, **full)
    reference = plain(clip, rng=np.random.default_rng(0))
    for seed in range(20):
        assert torch.equal(plain(clip, rng=np.random.default_rng(seed)), reference)
    flipped = [torch.equal(flipping(clip, rng=np.random.default_rng(s)), reference.flip(-1))
               for s in range(20)]
    assert any(flipped) and not all(flipped)


def test_test_mode_resizes_short_side_then_centre_crops():
    clip = three_squares(60, 180)
    out = VideoTransform(32, (0, 0, 0), (1, 1, 1), train=False)(clip)
    assert out.shape == (3, 4, 32, 32)
    assert dominant_channels([out.permute(1, 0, 2, 3)]) == [1]  # the green middle
    # Inside a 1-pixel border (resize blur) it is pure green: exactly the middle third.
    inner = out[..., 1:-1]
    assert inner[1].min() > 0.99 and inner[0].max() < 0.01 and inner[2].max() < 0.01
    bigger = VideoTransform(32, (0, 0, 0), (1, 1, 1), train=False, short_side=40)(clip)
    assert bigger.shape == (3, 4, 32, 32)


@pytest.mark.parametrize("height,width", [(60, 180), (180, 60)])
def test_three_crops_cover_both_ends_and_centre(height, width):
    video = short_side_resize(to_tensor(three_squares(height, width)), 32)
    assert min(video.shape[-2:]) == 32 and max(video.shape[-2:]) == 96
    crops = spatial_crops(video, 32, 3)
    assert [tuple(c.shape[-2:]) for c in crops] == [(32, 32)] * 3
    assert dominant_channels(crops) == [0, 1, 2]  # left/top, centre, right/bottom
    assert dominant_channels(spatial_crops(video, 32, 1)) == [1]


def test_multi_crop_matches_single_view_for_one_crop():
    clip = np.random.default_rng(0).integers(0, 256, (4, 50, 70, 3), dtype=np.uint8)
    transform = VideoTransform(32, CLIP_MEAN, CLIP_STD, train=False)
    (single,) = transform.multi_crop(clip, 1)
    assert torch.equal(single, transform(clip))
    three = transform.multi_crop(clip, 3)
    assert len(three) == 3 and all(v.shape == (3, 4, 32, 32) for v in three)


def test_spatial_crops_rejects_bad_requests():
    video = torch.zeros(2, 3, 32, 48, dtype=torch.uint8)
    with pytest.raises(ValueError, match="num_crops must be 1 or 3"):
        spatial_crops(video, 32, 2)
    with pytest.raises(ValueError, match="cannot crop 40x40 from 32x48"):
        spatial_crops(video, 40, 3)


def test_random_resized_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_box(90, 160, (0.25, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= 90 - h and 0 <= left <= 160 - w
        assert 0.25 * 0.9 <= h * w / (90 * 160) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
