"""`adapt --task retrieval` and `eval --task retrieval` under two real processes (torchrun, gloo on CPU),
including the uneven case: one process's first batches hold only unreadable videos."""
import json
import shutil
import subprocess

import adaptvid
from conftest import TWO_PROCESS_ENV, TWO_PROCESSES


def _captions_with_missing_videos(demo, data):
    """The demo's training captions with two missing videos at the list positions (1 and 3) that, in list
    order with one clip per batch, are the second process's first two batches."""
    shutil.copytree(demo, data)
    lines = (data / "captions_train.jsonl").read_text().splitlines()[:12]
    missing = [json.dumps({"video": f"missing-{i}.mp4", "captions": ["a square grows"]}) for i in (1, 2)]
    lines[1:1], lines[3:3] = [missing[0]], [missing[1]]
    (data / "captions_train.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def test_two_process_contrastive_training_with_one_process_unreadable(demo, tmp_path):
    data = tmp_path / "data"
    entries = _captions_with_missing_videos(demo, data)
    out = tmp_path / "ddp"
    cmd = [*TWO_PROCESSES, "-m", "adaptvid", "adapt", "--task", "retrieval", "--backbone", "tiny-clip",
           "--method", "st-adapter,clip4clip", "--train", str(data / "captions_train.jsonl"),
           "--val", str(data / "captions_val.jsonl"), "--output", str(out), "--epochs", "1", "--batch-size", "1",
           "--shuffle", "false", "--num-workers", "0", "--no-progress", "--frames", "4"]
    done = subprocess.run(cmd, env=TWO_PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped 2 unreadable training videos" in done.stdout + done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["event"] == "eval"][-1]
    assert final["num_videos"] == 12 and final["num_captions"] == 24 and final["skipped"] == 0   # gathered once
    assert records[-1]["event"] == "done" and records[-1]["num_processes"] == 2
    assert records[-1]["step"] == -(-entries // 2)   # every step taken by both processes, none skipped
    assert all(r["loss"] is not None for r in records if r["event"] == "train")


def test_two_process_retrieval_eval_equals_one_process(demo, tmp_path):
    out = tmp_path / "run"
    adaptvid.adapt(task="retrieval", backbone="tiny-clip", method="clip4clip", train=str(demo / "captions_train.jsonl"),
                   val=str(demo / "captions_val.jsonl"), output=str(out), epochs=1, batch_size=4, num_workers=0,
                   progress=False, frames=4)
    single = adaptvid.retrieval.evaluate_retrieval(str(out), demo / "captions_val.jsonl", num_workers=0, batch_size=1)
    cmd = [*TWO_PROCESSES, "-m", "adaptvid", "eval", "--task", "retrieval", "--checkpoint", str(out), "--captions",
           str(demo / "captions_val.jsonl"), "--num-workers", "0", "--batch-size", "1", "--json"]
    done = subprocess.run(cmd, env=TWO_PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"t2v"') == 1   # printed once, not once per process
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["num_videos"] == single["num_videos"] == 12 and result["num_captions"] == 24
    for direction in ("t2v", "v2t"):
        for metric, value in single[direction].items():
            assert abs(result[direction][metric] - value) <= 1e-6, (direction, metric)
