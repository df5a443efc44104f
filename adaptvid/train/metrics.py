"""The metrics log (metrics.jsonl, TensorBoard) and the training-curve plot."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional


METRICS_FILE = "metrics.jsonl"


def finite_or_none(value):
    """JSON has no NaN or infinity: non-finite numbers (in lists and dicts too) become None (``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard when installed).

    Every line is strict JSON: a non-finite number (a NaN loss) is written as ``null``.
    ``purge_step`` (on resume: the checkpoint's step + 1) hides TensorBoard events the previous
    process wrote from that step on, as ``metrics.jsonl`` is truncated to the checkpoint.
    """

    def __init__(self, directory: Path, enabled: bool = True, purge_step: Optional[int] = None) -> None:
        self.path = Path(directory) / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = None
        self.lines = count_lines(self.path) if enabled else 0   # what a checkpoint records, to truncate back to
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(Path(directory) / "tensorboard"), purge_step=purge_step)
            except Exception:  # tensorboard is optional
                self.tensorboard = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = finite_or_none({"time": round(time.time(), 3), **record})
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        self.lines += 1
        if self.tensorboard is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "time"):
                    self.tensorboard.add_scalar(f"{record.get('event', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _parse(line: str) -> Optional[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file; lines that are not JSON objects (a line cut short by a kill) are left out."""
    path = Path(path)
    if not path.exists():
        return []
    records = (_parse(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r is not None]


def truncate_metrics(path: Path, step: int, lines: Optional[int] = None) -> int:
    """Keep the records of ``metrics.jsonl`` written up to a checkpoint: its first ``lines`` lines when the
    checkpoint recorded how many there were, else every record up to ``step`` but ``done`` records (the run goes
    on). What a killed run wrote after its last checkpoint — the resumed run writes it again — and unreadable
    lines are dropped. Rewritten atomically; returns how many lines were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    text = path.read_text()
    all_lines = text.splitlines()
    if lines is not None and lines <= len(all_lines):
        kept = [line for line in all_lines[:lines] if _parse(line) is not None]
    else:
        kept = []
        for line in all_lines:
            record = _parse(line)
            if record is None or record.get("event") == "done":
                continue
            if isinstance(record.get("step"), (int, float)) and record["step"] > step:
                continue
            kept.append(line)
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(new_text)
        os.replace(temporary, path)
    return len([line for line in all_lines if line.strip()]) - len(kept)


def count_lines(path: Path) -> int:
    path = Path(path)
    return len(path.read_text().splitlines()) if path.exists() else 0


def plot_curves(metrics_path: Path, out_png: Path, metric: str = "top1", title: str | None = None) -> Path | None:
    """Training loss per step and the validation ``metric`` per epoch (a percentage: top-1, t2v R@1...),
    as one PNG titled ``title`` (the backbone, methods and output folder)."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [math.nan if r.get("loss") is None else r["loss"] for r in train])
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss")
    values = [math.nan if r.get(metric) is None else r[metric] for r in evals]
    right.plot([r["epoch"] for r in evals], values, marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation {metric.replace('_', ' ')} (%)")
    right.set_ylim(0, 100)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
