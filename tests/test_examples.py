"""The examples run as a user would run them: as scripts, in a fresh process."""
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOSS = re.compile(r"^step\s+\d+/\d+\s+loss\s+([0-9.]+)$", re.MULTILINE)
FINAL = re.compile(r"^final loss\s+([0-9.]+)", re.MULTILINE)


def _run(script, *args, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=EXAMPLES.parent,
    )


def test_plain_pytorch_loop_learns_and_round_trips(tmp_path):
    out = tmp_path / "checkpoint"
    result = _run("plain_pytorch_loop.py", "--steps", "40", "--log-every", "10", "--out", str(out))
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"

    losses = [float(v) for v in LOSS.findall(result.stdout)]
    final = FINAL.search(result.stdout)
    assert len(losses) == 5 and final, result.stdout      # steps 1, 10, 20, 30, 40
    assert float(final.group(1)) == losses[-1]
    assert losses[-1] < losses[0], f"loss did not go down:\n{result.stdout}"

    assert "identical outputs: True" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "adaptvid.json"]
    assert "st-adapter" in (out / "adaptvid.json").read_text()
