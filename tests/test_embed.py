"""adaptvid embed: video embeddings of a list, in list order, for other tasks."""
import json

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.cli import main
from adaptvid.data import VideoDataset, VideoTransform, collate_videos, read_list_file
from adaptvid.data.demo import make_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=1, videos_per_class_val=1, num_frames=8)
    return root


def test_backbone_embeddings_equal_encode_video_in_list_order_and_skip_unreadable(demo, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    lines = (demo / "val.txt").read_text().splitlines()
    listing.write_text("\n".join(lines[:3] + ["missing.mp4 0"] + lines[3:]) + "\n")
    out = tmp_path / "emb.safetensors"
    assert main(["embed", "--backbone", "tiny-clip", "--frames", "4", "--data", str(listing), "--data-root", str(demo),
                 "--output", str(out), "--num-workers", "0"]) == 0
    tensors, info = load_file(str(out)), json.loads(out.with_suffix(".json").read_text())
    assert tensors["embeddings"].shape == (6, 32) and info["skipped"] == 1
    assert tensors["indices"].tolist() == [0, 1, 2, 4, 5, 6]                       # the missing row is left out
    assert [p.split("/")[-2:] for p in info["videos"]] == [l.split()[0].split("/")[-2:] for l in lines]
    model = adaptvid.build_model("tiny-clip", "frozen", num_frames=4).eval()
    pp = model.backbone.preprocess
    dataset = VideoDataset(read_list_file(demo / "val.txt", demo), num_frames=4, train=False,
                           transform=VideoTransform(pp.image_size, pp.mean, pp.std, train=False,
                                                     interpolation=pp.interpolation))
    video = collate_videos([dataset[0], dataset[1]])["video"]
    with torch.no_grad():
        assert torch.allclose(tensors["embeddings"][:2], model.encode_video(video), atol=1e-6)
    assert tensors["labels"].tolist() == [int(l.split()[1]) for l in lines]


def test_checkpoint_embeddings_views_normalisation_and_no_overwrite(demo, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--method", "st-adapter", "--bottleneck", "8",
                 "--output", str(ckpt), "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                 "--no-progress", "--frames", "4"]) == 0
    out = tmp_path / "emb.safetensors"
    common = ["embed", "--checkpoint", str(ckpt), "--data", str(demo / "val.txt"), "--output", str(out),
              "--num-workers", "0"]
    assert main([*common, "--views", "2x3", "--normalize"]) == 0
    embeddings = load_file(str(out))["embeddings"]
    assert embeddings.shape == (6, 64)                       # st-adapter's unprojected readout: width 64
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(6), atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["views"] == "2x3"
    capsys.readouterr()
    assert main(common) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*common, "--overwrite"]) == 0
    with pytest.raises(SystemExit, match="exactly one"):
        main(["embed", "--data", str(demo / "val.txt"), "--output", str(tmp_path / "x.safetensors")])
