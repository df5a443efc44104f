import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adaptvid.data import (VideoDataset, VideoSample, VideoTransform, collate_videos,
                           open_video)
from adaptvid.data.sampling import segment_indices_for_view
from adaptvid.data.transforms import CLIP_MEAN, CLIP_STD


@pytest.fixture()
def samples(lossless_video, lossy_video):
    return [VideoSample(lossless_video[0], 3), VideoSample(lossy_video[0], 1)]


def test_train_item_shape_label_and_reproducibility(samples):
    ds = VideoDataset(samples, num_frames=4, size=32, train=True, seed=0)
    item = ds[1]
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
    assert (item["label"], item["index"]) == (1, 1)
    assert torch.equal(ds[1]["video"], item["video"])  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(ds[1]["video"], item["video"])
    ds.set_epoch(0)
    assert torch.equal(ds[1]["video"], item["video"])
    other_seed = VideoDataset(samples, num_frames=4, size=32, train=True, seed=1)
    assert not torch.equal(other_seed[1]["video"], item["video"])


def test_eval_item_keeps_time_order_on_the_t_axis(lossless_video):
    path, source = lossless_video
    ds = VideoDataset([VideoSample(path, 0)], num_frames=4, size=32, train=False,
                      transform=VideoTransform(32, (0, 0, 0), (1, 1, 1), train=False))
    video = ds[0]["video"]
    assert video.shape == (3, 4, 32, 32)
    # Frames 2, 6, 10, 14 (segment centres); the source's red level rises with time.
    red = video[0].mean(dim=(1, 2)) * 255
    expected = torch.tensor([source[i, ..., 0].mean() for i in (2, 6, 10, 14)], dtype=torch.float32)
    assert torch.allclose(red, expected, atol=3)


def test_multi_view_is_clip_major(samples):
    ds = VideoDataset(samples, num_frames=4, size=32, train=False, views="2x3")
    video = ds[1]["video"]
    assert video.shape == (6, 3, 4, 32, 32)
    single = VideoDataset(samples, num_frames=4, size=32, train=False, views=(2, 1))[1]["video"]
    assert single.shape == (2, 3, 4, 32, 32)
    # Crop 1 of each clip is the centre crop, i.e. the single-crop view of that clip.
    assert torch.equal(video[1], single[0]) and torch.equal(video[4], single[1])
    transform = VideoTransform(32, CLIP_MEAN, CLIP_STD, train=False)
    reader = open_video(samples[1].path)
    clip1 = reader.get_frames(segment_indices_for_view(len(reader), 4, 1, 2))
    assert torch.equal(single[1], transform(clip1))


def test_dense_sampling_dataset(samples):
    ds = VideoDataset(samples, num_frames=4, stride=2, sampling="dense", size=32, train=True)
    assert ds[0]["video"].shape == (3, 4, 32, 32)


def test_bad_configuration_is_rejected(samples):
    with pytest.raises(ValueError, match="for evaluation"):
        VideoDataset(samples, train=True, views=(2, 3))
    with pytest.raises(ValueError, match="sampling must be"):
        VideoDataset(samples, sampling="uniform")
    with pytest.raises(ValueError, match="CLIPSxCROPS"):
        VideoDataset(samples, train=False, views="2by3")


def test_unreadable_videos_are_skipped_and_counted(samples, tmp_path, caplog):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken = samples + [VideoSample(str(empty), 0), VideoSample(str(tmp_path / "gone.mp4"), 2)]
    ds = VideoDataset(broken, num_frames=4, size=32, train=False)
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        assert ds[2] == {"unreadable": 2} and ds[3] == {"unreadable": 3}
    messages = [r.getMessage() for r in caplog.records if r.name == "adaptvid.data"]
    assert len(messages) == 2
    assert str(empty) in messages[0] and "empty (0 bytes)" in messages[0]
    assert "gone.mp4" in messages[1] and "no such file" in messages[1]

    batch = collate_videos([ds[0], ds[2], ds[1], ds[3]])
    assert batch["skipped"] == 2 and batch["video"].shape == (2, 3, 4, 32, 32)
    assert batch["label"].tolist() == [3, 1] and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == [0, 1] and batch["index"].dtype == torch.long
    assert batch["skipped_indices"].tolist() == [2, 3]   # which videos: counted once each under DDP

    nothing = collate_videos([None, None, None])
    assert nothing["video"] is None and nothing["skipped"] == 3
    assert nothing["label"].shape == (0,) and nothing["index"].shape == (0,)


def test_epoch_reaches_persistent_workers_and_items_do_not_depend_on_worker(samples):
    ds = VideoDataset(samples * 2, num_frames=4, size=32, train=True, seed=3)
    in_process = [ds[i]["video"] for i in range(4)]
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,
                        collate_fn=collate_videos)

    def run():
        return torch.cat([batch["video"] for batch in loader])

    epoch0 = run()
    assert torch.equal(epoch0, torch.stack(in_process))
    ds.set_epoch(1)
    epoch1 = run()
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch1, torch.stack([ds[i]["video"] for i in range(4)]))
