"""The metrics log (metrics.jsonl, TensorBoard) and the training-curve plot."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard when installed)."""

    def __init__(self, directory: Path, enabled: bool = True) -> None:
        self.path = Path(directory) / "metrics.jsonl"
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(Path(directory) / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tensorboard = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.tensorboard.add_scalar(f"{record.get('event', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out_png: Path) -> Path | None:
    """Training loss per step and validation top-1 per epoch, as one PNG."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train])
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss")
    right.plot([r["epoch"] for r in evals], [r["top1"] for r in evals], marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel("validation top-1 (%)")
    right.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
