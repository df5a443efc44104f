"""The run's decode size (data.decode_short_side): its default, its spellings, and the feature-cache key."""
import pytest

from adaptvid import build_model
from adaptvid.data import VideoSample
from adaptvid.runner.data import decode_short_side, make_dataset
from adaptvid.train.feature_cache import fingerprint

SAMPLES = [VideoSample("videos/a.mp4", 0), VideoSample("videos/b.mp4", 1)]


@pytest.fixture(scope="module")
def model():
    return build_model("tiny-clip", "frozen", num_classes=2, num_frames=4)   # 64 px, bicubic


def test_full_size_decoding_is_the_default_and_auto_is_one_setting_away(model):
    # benchmarks/bench_data.py: no clear gain on H.264 files, so runs decode at full size unless asked
    assert decode_short_side({}) is None
    assert make_dataset(model, {}, SAMPLES, train=True).decode_short_side is None
    auto = {"decode_short_side": "auto"}
    assert make_dataset(model, auto, SAMPLES, train=True).decode_short_side == 128   # 64 / sqrt(0.25)
    assert make_dataset(model, auto, SAMPLES, train=False).decode_short_side == 64   # the test-time short side
    assert make_dataset(model, {"decode_short_side": 96}, SAMPLES, train=True).decode_short_side == 96
    assert decode_short_side({"decode_short_side": "96"}) == 96   # as a --set value may arrive


@pytest.mark.parametrize("value", [None, False, 0, "off", "OFF", "none", "null", "full"])
def test_off_spellings(value):
    assert decode_short_side({"decode_short_side": value}) is None


@pytest.mark.parametrize("value", ["auto", " Auto ", True])
def test_auto_spellings(value):
    assert decode_short_side({"decode_short_side": value}) == "auto"


@pytest.mark.parametrize("value", [-1, 1.5, "small", [224]])
def test_bad_values_name_the_setting(value):
    with pytest.raises(ValueError, match=r"data\.decode_short_side must be auto, a short side in pixels or off"):
        decode_short_side({"decode_short_side": value})


def test_cache_fingerprint_keeps_old_keys_and_separates_reduced_decoding(model):
    # Literal keys computed by the fingerprint before decode_short_side existed: full-size caches stay valid.
    assert fingerprint(model, make_dataset(model, {}, SAMPLES, train=True), "train") == "006630cdbec84c51"
    assert fingerprint(model, make_dataset(model, {}, SAMPLES, train=False), "val") == "db5c5dfee04af40e"
    reduced = make_dataset(model, {"decode_short_side": "auto"}, SAMPLES, train=True)
    assert fingerprint(model, reduced, "train") != "006630cdbec84c51"   # other pixels: never read the full-size cache


def test_a_run_records_the_setting_and_caches_apart(demo, tmp_path, capsys):
    import json

    from adaptvid.cli import main

    cache = tmp_path / "cache"
    common = ["adapt", "--backbone", "tiny-clip", "--method", "frozen", "--train", str(demo / "train.txt"),
              "--val", str(demo / "val.txt"), "--cache-features", str(cache), "--epochs", "1", "--batch-size", "4",
              "--num-workers", "0", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "full")]) == 0
    assert main([*common, "--output", str(tmp_path / "auto"), "--set", "data.decode_short_side=auto"]) == 0
    assert len({p.parent for p in cache.rglob("train-*.safetensors")}) == 2   # not the full-size features
    recorded = json.loads((tmp_path / "auto" / "adaptvid.json").read_text())["extra"]["data"]
    assert recorded["decode_short_side"] == "auto"   # evaluation decodes the same way
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "auto"), "--data", str(demo / "val.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 12


def test_retrieval_datasets_take_the_run_setting_too(demo):
    """Captioned videos (adapt/eval --task retrieval) decode at the size the run asks for, like labelled ones."""
    from adaptvid.runner.retrieval import caption_dataset

    retrieval = build_model("tiny-clip", "clip4clip", num_frames=4)
    captions = str(demo / "captions_val.jsonl")
    assert caption_dataset(retrieval, {}, captions, train=False).decode_short_side is None
    auto = caption_dataset(retrieval, {"decode_short_side": "auto"}, captions, train=False)
    assert auto.decode_short_side == 64
    assert caption_dataset(retrieval, {"decode_short_side": "auto"}, captions, train=True).decode_short_side == 91   # 64 / sqrt(0.5): retrieval crops
    full = caption_dataset(retrieval, {}, captions, train=False)[0]["video"]
    reduced = auto[0]["video"]
    assert reduced.shape == full.shape and (reduced - full).abs().mean() < 0.1   # the same clip, resized earlier
