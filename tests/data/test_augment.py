"""Clip-consistent RandAugment and random erasing."""
import numpy as np
import pytest
import torch

from adaptvid.data import RandAugment, VideoTransform, random_erase
from adaptvid.data.augment import OPERATIONS, RandAugmentSpec, _apply


def _clip(frames=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    one = torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    return one.expand(frames, -1, -1, -1).clone()          # identical frames: any per-frame difference is visible


def test_timm_spec_strings_parse():
    assert RandAugmentSpec.parse("rand-m7-n4-mstd0.5-inc1") == RandAugmentSpec(4, 7.0, 0.5, True)
    assert RandAugmentSpec.parse("m9-n2") == RandAugmentSpec(2, 9.0, 0.0, False)
    with pytest.raises(ValueError, match="cannot read 'x3'"):
        RandAugmentSpec.parse("rand-m7-x3")
    with pytest.raises(ValueError, match="0 <= m <= 10"):
        RandAugmentSpec.parse("rand-m12-n2")


@pytest.mark.parametrize("name", OPERATIONS)
@pytest.mark.parametrize("increasing", [False, True])
def test_every_operation_keeps_the_clip_uint8_shaped_and_the_same_across_frames(name, increasing):
    video = _clip()
    out = _apply(name, video, 7.0, increasing, np.random.default_rng(1))
    assert out.dtype == torch.uint8 and out.shape == video.shape
    assert all(torch.equal(out[0], out[t]) for t in range(1, 4)), name


@pytest.mark.parametrize("name", ["Rotate", "Posterize", "Solarize", "SolarizeAdd", "Contrast", "ShearX", "TranslateYRel"])
def test_full_magnitude_changes_the_clip(name):
    video = _clip()
    strong = _apply(name, video, 10.0, True, np.random.default_rng(2))
    assert not torch.equal(strong, video), name


def test_randaugment_is_deterministic_per_rng_and_varies_across_draws():
    augment = RandAugment("rand-m7-n4-mstd0.5-inc1")
    video = _clip()
    a = augment(video, np.random.default_rng(5))
    b = augment(video, np.random.default_rng(5))
    assert torch.equal(a, b)
    outs = {augment(video, np.random.default_rng(seed)).float().mean().item() for seed in range(12)}
    assert len(outs) > 3
    with pytest.raises(ValueError, match="uint8 clip"):
        augment(video.float(), np.random.default_rng(0))


def test_random_erasing_erases_one_box_with_the_same_noise_in_every_frame():
    video = torch.zeros(3, 4, 32, 32)
    random_erase(video, 1.0, np.random.default_rng(3))
    changed = video != 0
    assert changed.any() and all(torch.equal(video[:, 0], video[:, t]) for t in range(4))
    rows, cols = changed[0, 0].nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed[0, 0].sum() == box                      # one rectangle
    assert 0.02 * 32 * 32 * 0.5 <= box <= 32 * 32 / 3 * 1.5
    untouched = torch.zeros(3, 4, 32, 32)
    assert torch.equal(random_erase(untouched, 0.0, np.random.default_rng(3)), torch.zeros(3, 4, 32, 32))


def test_video_transform_applies_them_in_training_only_and_says_so():
    frames = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    plain = VideoTransform(32, (0.5,) * 3, (0.25,) * 3, train=True)
    strong = VideoTransform(32, (0.5,) * 3, (0.25,) * 3, train=True, randaugment="rand-m9-n3", random_erasing=1.0)
    assert "randaugment=RandAugment(n=3, m=9.0" in repr(strong) and "random_erasing=1.0" in repr(strong)
    assert repr(plain) == "VideoTransform(size=32, train=True, short_side=32, hflip=False)"   # cache fingerprints unchanged
    a = plain(frames, np.random.default_rng(1))
    b = strong(frames, np.random.default_rng(1))
    assert a.shape == b.shape == (3, 4, 32, 32) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="probability"):
        VideoTransform(32, (0.5,) * 3, (0.25,) * 3, train=True, random_erasing=2.0)


def test_color_jitter_and_grayscale_change_every_frame_alike():
    from adaptvid.data.augment import color_jitter, grayscale

    video = _clip()
    jittered = color_jitter(video, 0.4, np.random.default_rng(4))
    assert jittered.dtype == torch.uint8 and not torch.equal(jittered, video)
    assert all(torch.equal(jittered[0], jittered[t]) for t in range(1, 4))
    grey = grayscale(video)
    assert grey.shape == video.shape and torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    transform = VideoTransform(32, (0.5,) * 3, (0.25,) * 3, train=True, color_jitter=0.4, grayscale=1.0)
    out = transform(np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8), np.random.default_rng(1))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])   # grey (equal mean/std here)
    assert "color_jitter=0.4 (p=0.8), grayscale=1.0" in repr(transform)
