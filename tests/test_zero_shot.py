"""Zero-shot: the frozen CLIP baseline, re-pointing trained models at other classes, and the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.cli import main
from adaptvid.data.demo import demo_class_names, make_demo_data
from adaptvid.text import DEFAULT_TEMPLATES, TextClassifier
from conftest import tiny_video

OTHER = ["juggling", "surfing", "knitting", "typing"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=2, videos_per_class_val=2, num_frames=8)
    return root


@pytest.mark.parametrize("backbone", ["tiny-clip", "tiny-hf-clip"])
def test_zero_shot_model_is_frozen_clip_with_the_default_template_ensemble(backbone):
    model = adaptvid.zero_shot_model(backbone, OTHER, num_frames=4)
    assert isinstance(model.head, TextClassifier) and model.head.templates == DEFAULT_TEMPLATES
    assert not any(p.requires_grad for p in model.parameters())
    video = tiny_video()
    with torch.no_grad():
        frames = model.encode_frames(video)                    # per-frame CLIP image embeddings
        expected = model.text_logits(video, ["x"])             # same video path, any text
        logits = model(video)
    assert logits.shape == (2, 4) and expected.shape == (2, 1)
    assert torch.allclose(F.normalize(frames.mean(dim=1), dim=-1), F.normalize(model.encode_video(video), dim=-1))
    assert torch.equal(logits.argmax(dim=1), (model.encode_video(video) @ model.head.class_embeddings().t()).argmax(dim=1))


def test_set_classes_repoints_a_text_classifier_and_replaces_a_linear_head():
    model = adaptvid.build_model("tiny-clip", "frozen", class_names=demo_class_names(), num_frames=4)
    assert isinstance(model.head, torch.nn.Linear)
    adaptvid.set_classes(model, OTHER)                        # linear head -> text classifier over the new names
    assert isinstance(model.head, TextClassifier) and model.num_classes == 4 and model.class_names == OTHER
    assert model(tiny_video()).shape == (2, 4)
    head = model.head
    adaptvid.set_classes(model, OTHER[:2], templates=["{}"])  # a text classifier is kept and re-encoded
    assert model.head is head and head.templates == ("{}",) and model(tiny_video()).shape == (2, 2)


def test_models_outside_the_joint_space_are_refused_with_the_reason():
    model = adaptvid.build_model("tiny-clip", "st-adapter", class_names=demo_class_names(), bottleneck=8)
    with pytest.raises(ValueError, match="cannot be evaluated zero-shot.*project=True"):
        adaptvid.set_classes(model, OTHER)


def test_cli_zero_shot_from_a_backbone_and_from_a_checkpoint(demo, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a video of {}.\n")
    common = ["--zero-shot", "--classes", str(demo / "classes.txt"), "--data", str(demo / "val.txt"), "--json"]
    assert main(["eval", "--backbone", "tiny-clip", "--frames", "4", "--templates", str(templates), *common]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_videos"] == 12 and 0 <= result["top1"] <= 100

    out = tmp_path / "frozen"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--method", "frozen", "--output", str(out),
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--frames", "4"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), *common]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_videos"] == 12

    with pytest.raises(SystemExit, match="--classes"):
        main(["eval", "--backbone", "tiny-clip", "--zero-shot", "--data", str(demo / "val.txt")])
    with pytest.raises(SystemExit, match="exactly one"):
        main(["eval", "--backbone", "tiny-clip", "--checkpoint", str(out), *common])


def test_cli_predict_zero_shot_ranks_the_given_class_names(demo, capsys):
    video = sorted((demo / "val").rglob("*.mp4"))[0]
    assert main(["predict", "--zero-shot", "--backbone", "tiny-clip", "--frames", "4", "--classes",
                 str(demo / "classes.txt"), str(video), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top5 = result[0]["top"]
    assert len(top5) == 5 and {item["class"] for item in top5} <= set(demo_class_names())
    assert abs(sum(item["score"] for item in top5) - 1) < 0.2 and top5[0]["score"] >= top5[-1]["score"]


TEXT_METHODS = sorted(name for name, spec in adaptvid.list_methods().items() if spec.needs_text)


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_every_text_method_scores_another_class_set_or_says_why_not(method):
    model = adaptvid.build_model("tiny-clip", method, class_names=demo_class_names()[:3], num_frames=4).eval()
    try:
        adaptvid.set_classes(model, OTHER)
    except ValueError as error:      # class-specific learned context (vita-clip) cannot, and must say so
        assert "cannot score other classes" in str(error)
        return
    with torch.no_grad():
        assert model(tiny_video(frames=4)).shape == (2, len(OTHER)) and model.num_classes == len(OTHER)
