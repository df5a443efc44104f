"""Cached-feature training: same numbers as the live path, reused across runs, refused where it cannot apply."""
import json

import pytest
import torch

from adaptvid import build_model
from adaptvid.cli import main
from adaptvid.data import VideoDataset, VideoTransform, read_list_file
from adaptvid.train.feature_cache import cached_dataset

FAST = ["--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress"]


def _val_set(model, demo):
    pp = model.backbone.preprocess
    return VideoDataset(read_list_file(demo / "val.txt"), num_frames=4, train=False,
                        transform=VideoTransform(pp.image_size, pp.mean, pp.std, train=False))


def test_cached_features_give_the_live_logits(demo, tmp_path):
    model = build_model("tiny-clip", "frozen", num_classes=6, num_frames=4).eval()
    dataset = _val_set(model, demo)
    features = cached_dataset(model, dataset, tmp_path, "val", batch_size=4, num_workers=0)
    assert len(features) == 12
    item = features[5]
    video = dataset[item["index"]]["video"][None]
    with torch.no_grad():
        live = model(video)
        model.from_features = True
        cached = model(item["video"][None])
    torch.testing.assert_close(cached, live, rtol=0, atol=2e-2)  # features stored in fp16
    assert item["label"] == dataset.samples[item["index"]].label


def test_cli_trains_from_the_cache_and_reuses_it(demo, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = ["adapt", "--backbone", "tiny-clip", "--method", "frozen", "--train", str(demo / "train.txt"),
              "--val", str(demo / "val.txt"), "--cache-features", str(cache), *FAST]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    shards = sorted(cache.rglob("*.safetensors"))
    assert {p.name.split("-")[0] for p in shards} == {"train", "val"}
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert main([*common, "--output", str(tmp_path / "b")]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.safetensors"))] == stamps  # reused, not redone
    evals = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["num_videos"] == 12
    # The checkpoint is an ordinary one: it evaluates on videos.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "b"), "--data", str(demo / "val.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 12


def test_methods_that_train_inside_the_backbone_cannot_use_the_cache(demo, tmp_path):
    model = build_model("tiny-clip", "st-adapter", num_classes=6, num_frames=4, bottleneck=8)
    with pytest.raises(ValueError, match="frozen and untouched"):
        cached_dataset(model, _val_set(model, demo), tmp_path, "val")


def test_token_drop_with_the_cache_is_refused(demo, tmp_path, capsys):
    # the cache holds the backbone's full-token outputs: a token drop would silently do nothing
    assert main(["adapt", "--backbone", "tiny-clip", "--method", "frozen", "--train", str(demo / "train.txt"),
                 "--val", str(demo / "val.txt"), "--cache-features", str(tmp_path / "cache"), "--token-drop", "0.5",
                 *FAST, "--output", str(tmp_path / "a")]) == 2
    assert "--token-drop" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
