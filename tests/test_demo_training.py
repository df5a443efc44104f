"""Every method trains on the demo data: on a fixed batch of demo clips, with the demo's class names
as the text side sees them, a few optimiser steps bring the loss down."""
import pytest
import torch

import adaptvid
from adaptvid.data import VideoDataset, VideoTransform, collate_videos, read_list_file
from adaptvid.data.demo import demo_class_names, make_demo_data
from conftest import fixed_batch_losses
from test_matrix import SMALL

FRAMES = 4
METHODS = sorted(adaptvid.list_methods())
LR = {"full": 1e-4, "vifi-clip": 1e-4, "actionclip": 1e-4, "open-vclip": 1e-4, "singularity": 1e-4}


@pytest.fixture(scope="module")
def demo_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=2, videos_per_class_val=0, num_frames=8)
    model = adaptvid.build_model("tiny-clip", "frozen", num_classes=6)
    pp = model.backbone.preprocess
    batches = {}
    for frames in (FRAMES, 2 * FRAMES):    # DiST's clips hold 2T frames
        dataset = VideoDataset(read_list_file(root / "train.txt", root), num_frames=frames, train=False,
                               transform=VideoTransform(pp.image_size, pp.mean, pp.std, train=False))
        batch = collate_videos([dataset[i] for i in range(len(dataset))])
        batches[frames] = batch["video"], batch["label"]
    return batches


@pytest.mark.parametrize("method", METHODS)
def test_loss_goes_down_on_demo_clips(method, demo_batch):
    video, labels = demo_batch[2 * FRAMES if method == "dist" else FRAMES]
    model = adaptvid.build_model("tiny-clip", method, class_names=demo_class_names(), num_frames=FRAMES,
                                 **SMALL.get(method, {}))
    torch.manual_seed(0)
    losses = fixed_batch_losses(model, video, labels, steps=6, lr=LR.get(method, 1e-3))
    assert losses[-1] < losses[0], losses
