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


def test_every_python_block_of_the_readme_runs(tmp_path):
    """The README's Python examples are run as written (in a scratch folder: they write checkpoints)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for number, block in enumerate(blocks, start=1):
        result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=240,
                                env=env, cwd=tmp_path)
        assert result.returncode == 0, f"README python block {number} failed:\n{block}\n{result.stderr[-2000:]}"
