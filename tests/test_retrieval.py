"""Text-video retrieval end to end on the demo captions: contrastive training (`adapt --task retrieval`),
R@K evaluation of a checkpoint or a frozen CLIP, and `index` + `search`."""
import json

import pytest
import torch

import adaptvid
from adaptvid.cli import main
from adaptvid.retrieval import Index, evaluate_retrieval
from conftest import retrieval_fixed_batch_losses

FAST = ["--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--frames", "4"]
METRICS = {"R@1", "R@5", "R@10", "MdR", "MnR"}


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "seqtransf"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--task", "retrieval", "--backbone", "tiny-clip",
                 "--method", "clip4clip", "--sim-header", "seqTransf", "--output", str(out), *FAST]) == 0
    return out


def test_contrastive_training_writes_a_retrieval_checkpoint(trained, capsys):
    config = json.loads((trained / "adaptvid.json").read_text())
    assert config["methods"][0]["name"] == "clip4clip" and config["extra"]["task"] == "retrieval"
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and {"t2v_R@1", "v2t_R@1", "num_captions"} <= set(evals[-1])   # flat keys: curves, TensorBoard
    assert (trained / "curve.png").is_file()


def test_eval_task_retrieval_prints_both_directions(trained, demo, capsys):
    capsys.readouterr()
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(trained), "--captions",
                 str(demo / "captions_val.jsonl"), "--num-workers", "0", "--dsl", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_videos"] == 12 and result["num_captions"] == 24 and result["skipped"] == 0
    assert set(result["t2v"]) == METRICS and set(result["v2t"]) == METRICS
    assert set(result["dsl"]["t2v"]) == METRICS   # the re-normalised numbers come beside, not instead
    assert result == {**evaluate_retrieval(str(trained), demo / "captions_val.jsonl", num_workers=0, dsl=True)}


def test_frozen_clip_zero_shot_retrieval_baseline(demo, capsys):
    capsys.readouterr()
    assert main(["eval", "--task", "retrieval", "--backbone", "tiny-clip", "--frames", "4", "--captions",
                 str(demo / "captions_val.jsonl"), "--num-workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_captions"] == 24 and 0 <= result["t2v"]["R@1"] <= 100


def test_retrieval_from_python(demo, tmp_path):
    result = adaptvid.adapt(task="retrieval", backbone="tiny-clip", method="clip4clip", train=str(demo / "captions_train.jsonl"),
                            val=str(demo / "captions_val.jsonl"), output=str(tmp_path / "r"), epochs=1, batch_size=4,
                            num_workers=0, progress=False, frames=4)
    assert result["steps"] == 5 and set(result["t2v"]) == METRICS   # 18 videos / 4 per step


def test_the_contrastive_loss_goes_down_on_a_fixed_batch(demo):
    model = adaptvid.build_model("tiny-clip", "clip4clip", num_frames=4, sim_header="seqTransf")
    losses = retrieval_fixed_batch_losses(model, demo / "captions_train.jsonl")
    assert losses[-1] < losses[0] * 0.8, losses


def test_x_pool_trains_and_evaluates_with_its_text_conditioned_scores(demo, tmp_path, capsys):
    out = tmp_path / "xpool"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--task", "retrieval", "--backbone", "tiny-clip",
                 "--method", "x-pool", "--output", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(out), "--captions",
                 str(demo / "captions_val.jsonl"), "--num-workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 12


def test_index_and_search_round_trip(trained, demo, tmp_path, capsys):
    index_file = tmp_path / "idx.safetensors"
    assert main(["index", str(demo / "val.txt"), "--checkpoint", str(trained), "--output", str(index_file),
                 "--num-workers", "0"]) == 0
    index = Index.load(index_file)
    assert len(index) == 12 and index.info["checkpoint"] == str(trained)
    for i in (0, 5, 11):   # a video's own embedding finds that video first
        assert index.search_embeddings(index.embeddings[i:i + 1], k=1)[0][0]["video"] == index.paths[i]
    capsys.readouterr()
    assert main(["search", str(index_file), "a square grows", "a disc fades", "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in results] == ["a square grows", "a disc fades"]
    scores = [item["score"] for item in results[0]["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert main(["index", str(demo / "val.txt"), "--checkpoint", str(trained), "--output", str(index_file)]) == 2


def test_a_retrieval_checkpoint_classifies_zero_shot(trained, demo, capsys):
    """Post-pretraining serves classification too: the contrastively trained model scores class names."""
    capsys.readouterr()
    assert main(["eval", "--zero-shot", "--checkpoint", str(trained), "--classes", str(demo / "classes.txt"),
                 "--data", str(demo / "val.txt"), "--num-workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_videos"] == 12 and 0 <= result["top1"] <= 100


def test_adapt_takes_captions_format_when_the_extension_does_not_say(demo, tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / f"{split}.txt").write_bytes((demo / f"captions_{split}.jsonl").read_bytes())
    common = ["adapt", "--task", "retrieval", "--backbone", "tiny-clip", "--method", "clip4clip", "--train",
              str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt"), "--data-root", str(demo), *FAST]
    assert main([*common, "--output", str(tmp_path / "a")]) == 2
    assert "captions format" in capsys.readouterr().err
    assert main([*common, "--captions-format", "jsonl", "--output", str(tmp_path / "b")]) == 0
    assert "R@1" in capsys.readouterr().out


@pytest.mark.parametrize("method, fix", [("st-adapter", "st-adapter,clip4clip"), ("evl", "owns the readout")])
def test_a_video_embedding_outside_the_joint_space_is_refused_with_the_fix(method, fix, demo, tmp_path, capsys):
    """st-adapter's readout is the tower's unprojected width and evl's a decoder output: neither can be compared
    with a caption; the refusal says why and what serves instead, before any data is read."""
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--task", "retrieval", "--backbone", "tiny-clip",
                 "--method", method, "--output", str(tmp_path / "r"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "64 wide" in err and "32 wide" in err and fix in err
    model = adaptvid.build_model("tiny-clip", method, num_frames=4)
    with pytest.raises(ValueError, match="joint video-text space"):
        evaluate_retrieval(model, demo / "captions_val.jsonl", num_workers=0)


@pytest.mark.parametrize("methods", ["lora,clip4clip", "zeroi2v,clip4clip"])
def test_in_backbone_methods_train_as_retrieval_encoders_under_a_head(methods, demo):
    """Compositions no official repository offers: LoRA or ZeroI2V adapters in the tower, CLIP4Clip's
    meanP over frames, the symmetric InfoNCE loss. The adapters must learn (their tensors move) and the
    loss fall on a fixed batch."""
    model = adaptvid.build_model("tiny-clip", methods, num_frames=4)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters()
                if p.requires_grad and methods.split(",")[0].replace("-", "") in n.replace("_", "").lower()}
    assert adapters, "the in-backbone method's tensors are trainable"
    losses = retrieval_fixed_batch_losses(model, demo / "captions_train.jsonl")
    assert losses[-1] < losses[0] * 0.8, losses
    moved = dict(model.named_parameters())
    assert all(not torch.equal(moved[n], before) for n, before in adapters.items())
