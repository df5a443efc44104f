"""The CLI end to end on a small demo set: adapt, eval, predict, resume, bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptvid.cli import main
from conftest import TWO_PROCESS_ENV, TWO_PROCESSES

FAST = ["--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--bottleneck", "16"]


def _adapt(demo, out, *extra):
    return main(["adapt", "--demo", "--demo-dir", str(demo), "--output", str(out), *FAST, *extra])


def test_adapt_eval_predict(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert _adapt(demo, out) == 0
    for name in ("adapter.safetensors", "adaptvid.json", "metrics.jsonl", "curve.png", "trainer_state.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "adaptvid.json").read_text())
    assert config["backbone"] == "tiny-clip" and config["methods"][0]["name"] == "st-adapter"
    assert config["class_names"][:2] == ["square growing", "square shrinking"]
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "train" in events and "eval" in events
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(out), "--data", str(demo / "val.txt"), "--views", "2x3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_videos"] == 12 and 0 <= result["top1"] <= 100 and result["top5"] >= result["top1"]

    video = demo / "val" / "square_growing" / "000.mp4"
    assert main(["predict", "--checkpoint", str(out), str(video), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions[0]["top"]) == 5
    assert predictions[0]["top"][0]["score"] >= predictions[0]["top"][1]["score"]


def test_existing_output_is_not_overwritten_and_resume_continues(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert _adapt(demo, out) == 0
    saved = (out / "adapter.safetensors").read_bytes()
    assert _adapt(demo, out) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (out / "adapter.safetensors").read_bytes() == saved

    import torch

    first = torch.load(out / "trainer_state.pt", weights_only=True)
    assert first["epoch"] == 1
    assert _adapt(demo, out, "--resume", "--extend", "--epochs", "2") == 0
    second = torch.load(out / "trainer_state.pt", weights_only=True)
    assert second["epoch"] == 2 and second["step"] == 2 * first["step"]
    train_steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
                   if json.loads(l)["event"] == "train"]
    assert train_steps == sorted(train_steps) and train_steps[-1] > first["step"]  # continued, not restarted


def test_unreadable_videos_are_skipped_and_counted(demo, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    (data / "empty.mp4").write_bytes(b"")
    with (data / "train.txt").open("a") as handle:
        handle.write("empty.mp4 0\nmissing.mp4 1\n")
    out = tmp_path / "run"
    assert main(["adapt", "--backbone", "tiny-clip", "--method", "frozen", "--train", str(data / "train.txt"),
                 "--val", str(data / "val.txt"), "--output", str(out), *FAST[:-2]]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 unreadable training videos" in captured.out + captured.err
    warnings = caplog.text + captured.err
    assert "empty.mp4" in warnings and "missing.mp4" in warnings


def test_method_flag_replaces_the_recipe_method_and_its_options(demo, tmp_path, capsys):
    out = tmp_path / "frozen"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--method", "frozen", "--output", str(out),
                 *FAST[:-2]]) == 0
    assert "ignoring recipe 'demo' option(s) bottleneck, placement" in capsys.readouterr().err
    assert json.loads((out / "adaptvid.json").read_text())["methods"] == [{"name": "frozen", "config": {}}]
    # An option the user typed for a method that lacks it is still an error, not silently dropped.
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--method", "frozen", "--output", str(tmp_path / "x"),
                 *FAST]) == 2


def test_malformed_list_line_names_file_and_line(demo, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4 0\nb.mp4 zero\n")
    assert main(["adapt", "--backbone", "tiny-clip", "--train", str(bad), "--output", str(tmp_path / "o"), *FAST[:-2]]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["st-adapter/k400-vit-b16-8f", "st-adapter/ssv2-vit-b16-8f"])
def test_published_recipes_run_a_smoke_step_on_a_tiny_backbone(recipe, demo, tmp_path):
    assert main(["adapt", "--recipe", recipe, "--demo", "--demo-dir", str(demo), "--output", str(tmp_path / "o"),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=4", *FAST]) == 0
    config = json.loads((tmp_path / "o" / "adaptvid.json").read_text())
    placement = config["methods"][0]["config"]["placement"]
    assert placement == ("mlp" if "k400" in recipe else "attn+mlp")


def test_recipes_list_and_show(capsys):
    assert main(["recipes", "list"]) == 0
    listing = capsys.readouterr().out
    assert "st-adapter/k400-vit-b16-8f" in listing and "82.2" in listing and "demo" in listing
    assert "paper base/novel/HM 76.4/61.1/67.9" in listing and "paper zero-shot HMDB-51 51.3" in listing
    assert main(["recipes", "show", "st-adapter/ssv2-vit-b16-8f"]) == 0
    assert "attn+mlp" in capsys.readouterr().out
    assert main(["recipes", "show", "nope"]) == 2




def test_two_process_training_under_torchrun(demo, tmp_path):
    """Every process takes part in every step whatever its batch holds. In list order, batch i (of one clip)
    goes to process i % 2, so with lines 1 and 3 missing the second process's first two batches of the
    epoch are unreadable: it must re-run a readable clip with zero weight, not skip (which hung)."""
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    lines = (data / "train.txt").read_text().splitlines()[:24]
    lines[1:1], lines[4:4] = ["missing-1.mp4 0"], ["missing-2.mp4 1"]
    (data / "train.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ddp"
    cmd = [*TWO_PROCESSES, "-m", "adaptvid", "adapt", "--backbone", "tiny-clip", "--method", "st-adapter",
           "--train", str(data / "train.txt"), "--val", str(data / "val.txt"), "--classes", str(data / "classes.txt"),
           "--output", str(out), *FAST, "--batch-size", "1", "--shuffle", "false", "--epochs", "2"]
    done = subprocess.run(cmd, env=TWO_PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped 2 unreadable training videos" in done.stdout + done.stderr   # unique videos, not per epoch
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals[-1]["num_videos"] == 12  # gathered from both processes, no duplicates
    assert records[-1]["event"] == "done" and records[-1]["num_processes"] == 2   # really two processes
    per_process = -(-len(lines) // 2)   # the list entries, one per step, split over two processes
    assert records[-1]["step"] == 2 * per_process   # both epochs, every step taken by both


def test_folder_per_class_tree_trains_and_evaluates(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["adapt", "--backbone", "tiny-clip", "--method", "frozen", "--train", str(demo / "train"),
                 "--val", str(demo / "val"), "--output", str(out), *FAST[:-2]]) == 0
    config = json.loads((out / "adaptvid.json").read_text())
    assert config["class_names"] == sorted(p.name for p in (demo / "train").iterdir())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(demo / "val"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 12


def test_merge_command_folds_zeroi2v_and_keeps_the_predictions(demo, tmp_path, capsys):
    trained, merged = tmp_path / "trained", tmp_path / "merged"
    assert main(["adapt", "--demo", "--demo-dir", str(demo), "--method", "zeroi2v", "--output", str(trained),
                 *FAST[:-2]]) == 0
    assert main(["merge", "--checkpoint", str(trained), "--output", str(merged)]) == 0
    assert "merged zeroi2v" in capsys.readouterr().out
    assert json.loads((merged / "adaptvid.json").read_text())["merged"] == ["zeroi2v"]
    results = []
    for checkpoint in (trained, merged):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(demo / "val.txt"), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["top5"] == results[1]["top5"]
    assert main(["merge", "--checkpoint", str(trained), "--output", str(merged)]) == 2  # never overwrites
    assert main(["merge", "--checkpoint", str(merged), "--output", str(tmp_path / "again")]) == 2  # nothing left


@pytest.mark.parametrize("method", ["x-clip", "coop,vpt"])
def test_text_side_methods_train_under_two_processes(method, demo, tmp_path):
    """DDP with a text classifier, X-CLIP's (embedding, aux) encoder and learned prompts: no unused-parameter
    errors, evaluation gathered across processes."""
    out = tmp_path / "ddp"
    env = TWO_PROCESS_ENV
    cmd = [*TWO_PROCESSES, "-m", "adaptvid",
           "adapt", "--backbone", "tiny-clip", "--method", method, "--train", str(demo / "train.txt"),
           "--val", str(demo / "val.txt"), "--classes", str(demo / "classes.txt"), "--output", str(out),
           "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--no-progress", "--frames", "4"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["event"] == "eval"][-1]["num_videos"] == 12
    assert records[-1]["num_processes"] == 2


def test_eval_under_two_processes_shards_and_prints_once(demo, tmp_path):
    """Before: under torchrun every process scored every video and printed the result twice; and an
    unreadable video repeated by the sampler's padding was counted twice."""
    import adaptvid

    out = tmp_path / "run"
    assert _adapt(demo, out) == 0
    single = adaptvid.evaluate(str(out), str(demo / "val.txt"), num_workers=0)
    # 13 entries, the first unreadable: the sampler pads process 2 with entry 0 again; it is one skip, not two
    listing = tmp_path / "with-missing.txt"
    listing.write_text("missing.mp4 0\n" + "".join(f"{demo / l}\n" for l in (demo / "val.txt").read_text().split("\n") if l))
    cmd = [*TWO_PROCESSES, "-m", "adaptvid", "eval", "--checkpoint", str(out), "--data", str(listing),
           "--num-workers", "0", "--batch-size", "1", "--json"]
    done = subprocess.run(cmd, env=TWO_PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1   # once
    assert printed[0] == {**single, "skipped": 1}   # the same numbers over the same 12 readable videos
