"""Exact resume: what a training checkpoint must hold besides the tensors, and the checks before resuming.

- :func:`seed_everything` seeds Python, NumPy and torch (all devices); the runner calls it before
  the model is built, so the random init of new modules is seeded too.
- :func:`rng_state` / :func:`set_rng_state`: the random-generator states of one process (torch CPU
  and CUDA, NumPy, Python ``random``, the task's Mixup/CutMix generator) as tensors and plain
  numbers, so ``trainer_state.pt`` still loads with ``weights_only=True``.
- :class:`Schedule`: the warm-up + cosine learning-rate factor, with the anchor that ``--extend``
  moves (the cosine from the current step and phase to the new end).
- :func:`plan_resume`: everything ``fit(resume=True)`` checks before it changes anything in the
  output folder — a complete, readable checkpoint; the same backbone, weights, methods and options;
  the same schedule (or ``extend``) — returning what to start from.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..checkpoints import CONFIG_FILE, WEIGHTS_FILE, read_config
from ..checkpoints.adapter import load_tensors, model_config, read_tensors, saved_tensors
from ..checkpoints.fingerprint import FingerprintMismatchError, check_fingerprint
from ..checkpoints.unit import STATE_FILE, IncompleteCheckpointError, locate

logger = logging.getLogger("adaptvid.train")

STATE_FORMAT = 2   # 1: optimizer, scheduler, epoch, step only (adaptvid before exact resume)

# The schedule: a change is refused (epochs: unless extend=True).
SCHEDULE_FIELDS = ("epochs", "lr", "backbone_lr", "warmup_epochs", "batch_size", "grad_accum")
# What else changes the training itself: allowed on resume, with a warning that it is no longer the same run.
TRAINING_FIELDS = ("weight_decay", "seed", "clip_grad", "label_smoothing", "mixup", "cutmix", "mix_switch_prob",
                   "mix_prob", "precision", "shuffle", "token_drop")
# The model: a change is refused (weights: see plan_resume).
MODEL_FIELDS = ("backbone", "methods", "num_frames", "num_classes", "class_names", "pool", "project", "head_dropout",
                "merged", "init_from")


class ResumeMismatchError(ValueError):
    """``--resume`` with settings that differ from the checkpoint's (the message names each difference)."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch on every device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)   # also seeds every CUDA device


# -- random-generator states ------------------------------------------------------------

def _python_state(generator: random.Random | None = None) -> dict:
    version, internal, gauss = (generator or random).getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_python_state(state: dict, generator: random.Random | None = None) -> None:
    (generator or random).setstate((state["version"], tuple(int(v) for v in state["internal"].tolist()),
                                    state["gauss"]))


def rng_state(task=None) -> dict:
    """This process's random-generator states (see the module docstring)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    mixer = getattr(task, "mixer", None)
    if mixer is not None and hasattr(mixer, "rng"):
        state["mixer"] = _python_state(mixer.rng)
    return state


def set_rng_state(state: dict, task=None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    _set_python_state(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    mixer = getattr(task, "mixer", None)
    if mixer is not None and "mixer" in state:
        _set_python_state(state["mixer"], mixer.rng)


# -- the learning-rate schedule -----------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then a cosine whose phase runs linearly from
    ``anchor_phase`` at ``anchor_step`` to 1 (factor 0) at ``total``. A fresh run anchors at
    (``warmup``, 0) — the same numbers as :func:`adaptvid.train.schedule.warmup_cosine`."""
    warmup: int
    total: int
    anchor_step: int
    anchor_phase: float = 0.0

    @classmethod
    def fresh(cls, total: int, warmup: int) -> "Schedule":
        return cls(int(warmup), int(total), int(warmup), 0.0)

    def phase(self, step: int) -> float:
        progress = (step - self.anchor_step) / max(1, self.total - self.anchor_step)
        return min(1.0, max(0.0, self.anchor_phase + (1.0 - self.anchor_phase) * progress))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1.0 + math.cos(math.pi * self.phase(step)))

    def extended(self, step: int, total: int) -> "Schedule":
        """This schedule from ``step`` on, stretched (or shortened) to end at ``total``: the factor at ``step``
        is unchanged and the cosine continues from its current phase to 0 at the new end."""
        if step < self.warmup:   # still warming up: the warm-up is unchanged, the cosine spans the new length
            return Schedule(self.warmup, int(total), self.warmup, 0.0)
        return Schedule(self.warmup, int(total), int(step), self.phase(step))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Schedule":
        return cls(int(values["warmup"]), int(values["total"]), int(values["anchor_step"]),
                   float(values["anchor_phase"]))


# -- resume checks --------------------------------------------------------------------------

@dataclass
class ResumePlan:
    """Where a resumed run starts: ``epoch`` (completed epochs), ``batch`` (batches of the next epoch already
    trained, 0 at an epoch boundary), ``step``, the schedule, and the loaded states."""
    epoch: int
    batch: int
    step: int
    schedule: Schedule
    state: dict
    config: dict
    rng: Optional[list] = None
    skipped_indices: list = field(default_factory=list)
    nonfinite_steps: int = 0
    messages: list = field(default_factory=list)


def _json(value):
    return json.loads(json.dumps(value, default=str))


def _method_differences(before: list, now: list) -> list[str]:
    names_before, names_now = [m["name"] for m in before], [m["name"] for m in now]
    if names_before != names_now:
        return [f"method {','.join(names_before) or '-'} -> {','.join(names_now) or '-'}"]
    out = []
    for old, new in zip(before, now):
        for key in sorted(set(old["config"]) | set(new["config"])):
            a, b = old["config"].get(key, "(unset)"), new["config"].get(key, "(unset)")
            if a != b:
                out.append(f"{old['name']} option {key}: {a!r} -> {b!r}")
    return out


def _model_differences(recorded: dict, current: dict) -> list[str]:
    out = []
    for key in MODEL_FIELDS:
        if key not in recorded:
            continue
        a, b = recorded.get(key), _json(current.get(key))
        if key == "methods":
            out += _method_differences(a or [], b or [])
        elif key == "class_names" and a != b:
            out.append(f"class names differ ({len(a or [])} -> {len(b or [])} classes)")
        elif a != b:
            out.append(f"{key} {a!r} -> {b!r}")
    return out


def _resolved(train: dict, key: str):
    if key == "backbone_lr" and train.get("backbone_lr") is None and "lr" in train:
        return train["lr"] / 10
    return train.get(key)


class RunFinishedError(RuntimeError):
    """--resume of a run that already reached its epochs: there is no useful work to do."""


def _load_state(path: Path) -> dict:
    try:
        # weights_only: the state holds tensors, numbers and strings only — nothing is unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # The library's message is left out on purpose: torch's unpickling error suggests weights_only=False,
        # which is exactly what must not be done with a file that is not what adaptvid wrote.
        raise IncompleteCheckpointError(
            f"cannot resume {path.parent}: {STATE_FILE} cannot be loaded safely ({type(error).__name__}): it is "
            "truncated, corrupt or holds other Python objects than adaptvid writes (it is never unpickled). Nothing "
            "was changed. Restore the file from a copy, or pass --overwrite to train again from scratch") from error
    required = ("optimizer", "scheduler", "epoch", "step")
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise IncompleteCheckpointError(f"cannot resume {path.parent}: {STATE_FILE} lacks {missing}; it was not "
                                        "written by adaptvid's trainer. Nothing was changed. Pass --overwrite to "
                                        "start over")
    return state


def plan_resume(output: Path, model, cfg, *, class_names=None, steps_per_epoch: int, num_processes: int,
                train_size: int, extend: bool = False, allow_other_weights: bool = False) -> Optional[ResumePlan]:
    """Check that ``output`` can be resumed with this model and these settings, reading only; load the
    checkpoint's tensors into ``model``. None when there is nothing to resume (no checkpoint at all, or only an
    interrupted first save). Raises :class:`IncompleteCheckpointError`, :class:`ResumeMismatchError` or
    :class:`~adaptvid.checkpoints.fingerprint.FingerprintMismatchError` (all ValueErrors) naming the problem
    and the fix."""
    output = Path(output)
    if not output.is_dir():
        return None
    located = locate(output, names=(WEIGHTS_FILE, CONFIG_FILE, STATE_FILE))
    if located.where == "previous" and located.empty:
        return None
    directory = located.path
    present = {name: (directory / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE)}
    if not any(present.values()):
        return None
    if not all(present.values()):
        missing = [n for n, ok in present.items() if not ok]
        there = [n for n, ok in present.items() if ok]
        why = (f"{STATE_FILE} (the optimiser, schedule and random-generator state) is needed to continue the same "
               "training; a folder written by model.save_adapter or `adaptvid merge` has none"
               if missing == [STATE_FILE] else "the folder holds only part of a checkpoint")
        raise IncompleteCheckpointError(
            f"cannot resume {output}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
            f"({', '.join(there)} {'is' if len(there) == 1 else 'are'} there); {why}. Nothing was changed. Pass "
            "--overwrite to train from scratch in this folder, or choose another --output")
    notes = list(located.notes)
    try:
        config = read_config(directory)
    except (ValueError, FileNotFoundError) as error:
        raise IncompleteCheckpointError(f"cannot resume {output}: {error}. Nothing was changed") from error
    try:
        tensors = read_tensors(directory)
    except ValueError as error:
        raise IncompleteCheckpointError(f"cannot resume {output}: {error} (truncated or corrupt). Nothing was changed. "
                                        "Restore it from a copy, or pass --overwrite to start over") from error
    state = _load_state(directory / STATE_FILE)

    # the model: backbone, methods, options, classes...
    current = model_config(model, class_names)
    differences = _model_differences(config, current)
    if differences:
        raise ResumeMismatchError(
            f"cannot resume {output}: this command builds another model than the checkpoint's: "
            f"{'; '.join(differences)}. "
            "Nothing was changed. Resume with the run's own settings (see its adaptvid.json), or start a new run "
            "(--overwrite, or another --output)")
    # ... and the frozen weights under it
    trained, now = config.get("weights"), current.get("weights")
    recorded = config.get("frozen_fingerprint")
    if recorded:
        try:
            same = check_fingerprint(recorded, model, saved_tensors(model), where=str(output), trained_weights=trained,
                                     now_weights=now,
                                     allow_other_weights=allow_other_weights, init_from=config.get("init_from"))
        except FingerprintMismatchError as error:
            raise FingerprintMismatchError(f"cannot resume: {error} Nothing was changed.") from error
        if same and trained != now:
            notes.append(f"weights {trained!r} -> {now!r}: the same frozen tensors (fingerprint matches)")
    elif trained != now:
        message = (f"cannot resume {output}: it was trained on weights {trained!r}, this command uses {now!r}, and the "
                   "checkpoint has no frozen-weights fingerprint to tell whether they are the same tensors")
        if not allow_other_weights:
            raise ResumeMismatchError(message + ". Nothing was changed. Pass the same --weights, or "
                                      "allow_other_weights=True (--allow-other-weights) to continue anyway")
        logger.warning("%s (allowed: allow_other_weights)", message)
    else:
        check_fingerprint(None, model, (), where=str(output), trained_weights=trained, now_weights=now)

    if int(state["epoch"]) >= cfg.epochs and int(state.get("batch", 0)) == 0 and not extend:
        raise RunFinishedError(
            f"{output} already finished its {int(state['epoch'])} epoch(s): there is nothing to resume. Nothing was "
            "changed. To score it: adaptvid eval; to train further: a new run, or --resume --extend --epochs N where its "
            "schedule has not reached lr 0")
    schedule = _plan_schedule(output, cfg, config, state, steps_per_epoch, num_processes, train_size, extend, notes)
    load_tensors(model, tensors, directory / WEIGHTS_FILE)
    rng = state.get("rng")
    if rng is not None and len(rng) != num_processes:
        notes.append(f"the checkpoint holds the random-generator states of {len(rng)} processes, this run has "
                     f"{num_processes}: they are not restored (the run continues, but not bit-identically)")
        rng = None
    return ResumePlan(epoch=int(state["epoch"]), batch=int(state.get("batch", 0)), step=int(state["step"]),
                      schedule=schedule, state=state, config=config, rng=rng,
                      skipped_indices=[int(i) for i in state.get("skipped_indices", [])],
                      nonfinite_steps=int(state.get("nonfinite_steps", 0)), messages=notes)


def _plan_schedule(output: Path, cfg, config: dict, state: dict, steps_per_epoch: int, num_processes: int,
                   train_size: int, extend: bool, notes: list) -> Schedule:
    recorded = state.get("train") or (config.get("extra") or {}).get("train") or {}
    now = asdict(cfg)
    changed = {key: (_resolved(recorded, key), _resolved(now, key)) for key in SCHEDULE_FIELDS
               if key in recorded and _resolved(recorded, key) != _resolved(now, key)}
    for key, label in (("num_processes", "processes"), ("steps_per_epoch", "optimiser steps per epoch"),
                       ("train_size", "training videos")):
        value = {"num_processes": num_processes, "steps_per_epoch": steps_per_epoch, "train_size": train_size}[key]
        if key in state and int(state[key]) != value:
            changed[label] = (int(state[key]), value)
    others = [f"{key} {recorded[key]!r} -> {now[key]!r}" for key in TRAINING_FIELDS
              if key in recorded and recorded[key] != now[key]]
    step, epochs_done = int(state["step"]), int(state["epoch"])
    fixed = {k: v for k, v in changed.items() if k != "epochs"}
    if fixed:
        listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
        also = " (--extend changes only the number of epochs)" if extend else ""
        raise ResumeMismatchError(
            f"cannot resume {output}: the training schedule changed: {listed}{also}. The learning-rate schedule, the "
            "steps per epoch and the position in the epoch all depend on these. Nothing was changed. Resume with the "
            "run's own settings (adaptvid.json, extra.train), or start a new run (--overwrite, or another --output)")
    if others:
        notes.append(f"training settings changed on resume: {'; '.join(others)}: the continued run is not the one the "
                     "checkpoint started")
    if "schedule" in state:
        schedule = Schedule.from_dict(state["schedule"])
    else:   # a checkpoint of an adaptvid before exact resume: the schedule its settings gave
        old_epochs = int(recorded.get("epochs", cfg.epochs))
        warmup = float(recorded.get("warmup_epochs", cfg.warmup_epochs))
        schedule = Schedule.fresh(steps_per_epoch * old_epochs, int(round(warmup * steps_per_epoch)))
    if "epochs" not in changed:
        return schedule
    old_epochs, new_epochs = changed["epochs"]
    if not extend:
        planned = schedule.factor(step)
        other = Schedule.fresh(steps_per_epoch * new_epochs, schedule.warmup).factor(step)
        jump = (f": at step {step} the learning rate is {planned:.3g} x its peak and would jump to {other:.3g} x"
                if abs(planned - other) > 1e-12 else "")
        raise ResumeMismatchError(
            f"cannot resume {output}: it was planned for {old_epochs} epochs and this command asks for {new_epochs}, "
            f"which changes its learning-rate schedule{jump}. "
            f"Nothing was changed. Pass --extend to continue it for {new_epochs} epochs with the cosine stretched from "
            f"the current step, or resume with --epochs {old_epochs}")
    done = epochs_done + (1 if int(state.get("batch", 0)) else 0)
    if new_epochs < done:
        raise ResumeMismatchError(f"cannot resume {output} for {new_epochs} epochs: the checkpoint is already in epoch "
                                  f"{done} (step {step}). Nothing was changed")
    total = steps_per_epoch * new_epochs
    if step >= schedule.warmup and schedule.factor(step) == 0.0 and total > step:
        raise ResumeMismatchError(
            f"cannot extend {output}: its learning rate already reached 0 at step {step} (the end of its "
            f"{old_epochs}-epoch schedule); a schedule stretched from there stays at 0, so more epochs would not "
            "train. Nothing was changed. Start a new run for more training")
    extended = schedule.extended(step, total)
    notes.append(f"extending the run from {old_epochs} to {new_epochs} epochs: the cosine learning-rate schedule is "
                 f"stretched from the current step {step} (factor {schedule.factor(step):.4g} of the peak lr, "
                 f"unchanged) to reach 0 at step {total} instead of {schedule.total}")
    return extended


__all__ = ["ResumeMismatchError", "ResumePlan", "STATE_FORMAT", "Schedule", "plan_resume", "rng_state",
           "seed_everything", "set_rng_state"]
