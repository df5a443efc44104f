"""The training loop on Accelerate: mixed precision, accumulation, multi-GPU, checkpoints and exact resume.

Checkpoints (every epoch, and every ``save_every_steps`` optimiser steps) are written as one unit —
adapter, config and trainer state all old or all new (``adaptvid.checkpoints.unit``). The trainer
state holds the optimiser, the schedule, the position in the epoch and every random-generator state,
so a resumed run continues bit-identically (on the same hardware and number of processes).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..checkpoints import CONFIG_FILE, WEIGHTS_FILE
from ..checkpoints.adapter import MANIFEST_FILE, config_text, trainable_state, write_weights
from ..checkpoints.unit import PREVIOUS_DIR, STATE_FILE, TEMP_PREFIX, CheckpointSaveError, recover, write_unit
from ..data import collate_videos
from ..tasks import ClassificationTask, Task
from ..tasks.base import flatten_metrics
from .config import TrainConfig
from .metrics import METRICS_FILE, MetricsLog, plot_curves, truncate_metrics
from .resume import STATE_FORMAT, ResumePlan, Schedule, plan_resume, rng_state, set_rng_state
from .schedule import parameter_groups

logger = logging.getLogger("adaptvid.train")
CHECKPOINT_NAMES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, MANIFEST_FILE, PREVIOUS_DIR)


class OutputExistsError(FileExistsError):
    pass


class NoTrainingStepError(RuntimeError):
    """Training took no optimiser step (every training video unreadable): nothing is saved."""


class NonFiniteLossError(NoTrainingStepError):
    """The training loss (or a gradient norm, or a trained tensor) became NaN or infinite more often than
    ``max_nan_steps`` allows: the run stopped, and the last good checkpoint in the output folder is kept (no
    non-finite tensor is ever saved). A NoTrainingStepError, so that callers stopping on that stop on this too."""


def holds_checkpoint(output: Path) -> bool:
    """Whether ``output`` holds a checkpoint (or what an interrupted save left of one)."""
    return any((Path(output) / name).exists() for name in CHECKPOINT_NAMES)


def check_output_dir(output: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite a finished or running training without being asked (read-only)."""
    if holds_checkpoint(output) and not (resume or overwrite):
        raise OutputExistsError(
            f"{output} already holds a checkpoint; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output"
        )


def _prepare_output(output: Path, plan: Optional[ResumePlan], resume: bool, overwrite: bool) -> None:
    """Main process, after every check passed: make ``output`` ready for this run."""
    output.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        removed = []
        for name in (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE, MANIFEST_FILE, METRICS_FILE, "curve.png"):
            if (output / name).is_file():
                (output / name).unlink()
                removed.append(name)
        for path in output.iterdir():
            if path.is_dir() and (path.name.startswith(TEMP_PREFIX) or path.name.startswith(PREVIOUS_DIR)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name + "/")
        if removed:
            logger.info("--overwrite: removed %s from %s", ", ".join(removed), output)
        return
    for action in recover(output):
        logger.warning("%s: %s", output, action)
    if plan is not None:
        dropped = truncate_metrics(output / METRICS_FILE, plan.step, plan.state.get("metrics_lines"))
        if dropped:
            logger.warning("%s: dropped %d line(s) of %s written after the checkpoint (step %d) by the interrupted run",
                           output, dropped, METRICS_FILE, plan.step)
    elif truncate_metrics(output / METRICS_FILE, 0, 0):
        logger.warning("%s: cleared %s, left by a run that saved no checkpoint", output, METRICS_FILE)


def _loader(dataset, cfg: TrainConfig, shuffle: bool, batch_size: int, collate=collate_videos) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
        collate_fn=collate, drop_last=False, persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed) if shuffle else None,
    )


def fit(
    model,
    train_set,
    val_set,
    cfg: TrainConfig,
    output: str | Path,
    class_names: Optional[list[str]] = None,
    resume: bool = False,
    overwrite: bool = False,
    extra_config: Optional[dict] = None,
    task: Optional[Task] = None,
    *,
    extend: bool = False,
    allow_other_weights: bool = False,
) -> dict:
    """Train ``model`` on ``train_set`` for ``task`` (default: classification with the config's label
    smoothing and Mixup/CutMix), evaluating on ``val_set``; checkpoint into ``output`` every epoch (and
    every ``cfg.save_every_steps`` optimiser steps).

    ``resume``: continue the checkpoint in ``output`` exactly where it stopped (mid-epoch included). It is
    refused — before anything in the folder changes — when the checkpoint is incomplete, or was trained
    with another backbone, weights (unless ``allow_other_weights``), method or schedule; ``extend``
    allows a new number of epochs, stretching the cosine schedule from the current step.

    Returns the last evaluation's metrics (classification: top1, top5, mean_class, num_videos,
    skipped) plus ``train_skipped``, ``steps`` and ``nonfinite_steps``. Raises NonFiniteLossError when
    the loss stays non-finite (``cfg.max_nan_steps``), CheckpointSaveError when a save fails.
    """
    if extend and not resume:
        raise ValueError("extend=True (--extend) continues a run with more epochs: pass it with resume=True (--resume)")
    task = task if task is not None else ClassificationTask.from_train_config(cfg)
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    output = Path(output)
    accelerator = Accelerator(
        mixed_precision=cfg.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # the schedule counts optimiser steps: stepped below after each one actually taken
        step_scheduler_with_optimizer=False,
    )
    check_output_dir(output, resume, overwrite)
    set_seed(cfg.seed)

    collate = getattr(task, "collate", collate_videos)   # the task owns its batch shape
    train_loader = _loader(train_set, cfg, shuffle=cfg.shuffle, batch_size=cfg.batch_size, collate=collate)
    val_loader = (_loader(val_set, cfg, shuffle=False, batch_size=max(1, cfg.batch_size // 2), collate=collate)
                  if val_set else None)
    _set_efficiency(model, cfg)
    groups = parameter_groups(model, cfg.lr, cfg.resolved_backbone_lr, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    steps_per_epoch = max(1, -(-len(train_loader) // (cfg.grad_accum * accelerator.num_processes)))
    schedule = Schedule.fresh(steps_per_epoch * cfg.epochs, int(round(cfg.warmup_epochs * steps_per_epoch)))

    plan = None
    if resume:   # every process checks (read-only); nothing in the folder changes unless all checks pass
        plan = plan_resume(output, model, cfg, class_names=class_names, steps_per_epoch=steps_per_epoch,
                           num_processes=accelerator.num_processes, train_size=len(train_set), extend=extend,
                           allow_other_weights=allow_other_weights)
        if plan is None:
            if accelerator.is_main_process:
                logger.info("%s holds no checkpoint to resume: starting a new run", output)
        else:
            schedule = plan.schedule
            if accelerator.is_main_process:
                for message in plan.messages:
                    logger.warning("%s", message)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _prepare_output(output, plan, resume, overwrite)
    accelerator.wait_for_everyone()

    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    unwrapped_model = accelerator.unwrap_model(model)
    task.prepare(unwrapped_model, accelerator.process_index)
    step_model = compiled(model) if cfg.compile else model   # saving goes through unwrapped_model: plain keys
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    start_epoch, start_batch, step, nonfinite = 0, 0, 0, 0
    skipped_indices: set[int] = set()   # unique: the distributed sampler's padding repeats videos
    pending_rng = None
    if plan is not None:
        optimizer.load_state_dict(plan.state["optimizer"])
        scheduler.load_state_dict(plan.state["scheduler"])
        start_epoch, start_batch, step = plan.epoch, plan.batch, plan.step
        skipped_indices, nonfinite = set(plan.skipped_indices), plan.nonfinite_steps
        _align_schedule(scheduler.scheduler, optimizer, schedule, step)
        pending_rng = plan.rng[accelerator.process_index] if plan.rng else None
        where = f", batch {start_batch} of epoch {start_epoch + 1}" if start_batch else ""
        accelerator.print(f"resumed from {output} at epoch {start_epoch}, step {step}{where}")

    log = MetricsLog(output, enabled=accelerator.is_main_process, purge_step=step + 1 if plan is not None else None)
    recorded = {"train": dataclasses.asdict(cfg), **(extra_config or {})}
    saver = _Saver(accelerator, unwrapped_model, optimizer, scheduler, output, cfg, task, log, class_names, recorded,
                   schedule, steps_per_epoch, len(train_set))
    if plan is not None:
        saver.last_saved = (plan.epoch, plan.step)
    result: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        skip = start_batch if epoch == start_epoch else 0
        # Resuming mid-epoch: the batch sampler skips the batches already trained (their videos are not decoded).
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        if pending_rng is not None and not skip:
            set_rng_state(pending_rng, task)   # saved at the end of the previous epoch: restore before this one
            pending_rng = None
        bar = _progress(cfg, accelerator, len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}", initial=skip)
        tick, clips, last_good = time.perf_counter(), 0, None
        window_bad, bad_loss = False, None
        for batch_index, batch in enumerate(loader, start=skip):
            if pending_rng is not None:
                # saved mid-epoch after the previous batch; the loader's start (which may draw a seed) is behind us
                set_rng_state(pending_rng, task)
                pending_rng = None
            bar.update(1)
            skipped_indices.update(batch.get("skipped_indices", torch.zeros(0)).tolist())
            weight = 1.0
            if batch["video"] is None:  # every clip of this batch was unreadable
                if accelerator.num_processes == 1:
                    continue
                # The other processes take a step and wait for this one's gradients: every process
                # takes part in every step, so this one re-runs a readable batch with zero weight.
                if last_good is None:
                    last_good = _fallback_batch(train_set, accelerator.device, collate)
                if last_good is None:   # nothing in the whole set is readable: every process stops alike
                    continue
                batch, weight = last_good, 0.0
            last_good = batch
            stepped = False
            with accelerator.accumulate(model):
                loss = task.loss(step_model, batch, unwrapped_model)
                if _all_finite(loss, accelerator):   # one flag for all processes: they skip the step together
                    accelerator.backward(loss * weight)
                else:
                    local = loss.detach().float().item()
                    window_bad, bad_loss = True, (local if not math.isfinite(local) else "on another process")
                if accelerator.sync_gradients:
                    if not window_bad and cfg.clip_grad:
                        norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                           cfg.clip_grad)
                        if norm is not None and not bool(torch.isfinite(torch.as_tensor(norm)).all()):
                            window_bad, bad_loss = True, "finite, but its gradient norm was not"
                    if window_bad:   # no optimiser step: the gradients of this window are dropped
                        optimizer.zero_grad(set_to_none=True)
                        nonfinite += 1
                        log.write({"event": "nonfinite", "epoch": epoch + 1, "step": step,
                                   "loss": bad_loss if isinstance(bad_loss, float) else None,
                                   "nonfinite_steps": nonfinite})
                        if nonfinite > cfg.max_nan_steps:
                            bar.close()
                            _stop_on_nonfinite(log, output, epoch, step, bad_loss, nonfinite, cfg, saver)
                    else:
                        optimizer.step()
                        if not optimizer.step_was_skipped:   # fp16: a step with overflowing gradients is skipped
                            scheduler.step()
                            stepped = True
                        optimizer.zero_grad(set_to_none=True)
            clips += int(weight * task.batch_size(batch)) * accelerator.num_processes
            if accelerator.sync_gradients:
                window_bad = False
                if not stepped:
                    continue
                step += 1
                rate = clips / max(1e-9, time.perf_counter() - tick)
                lr = scheduler.get_last_lr()[-1]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == 1:
                    log.write({"event": "train", "epoch": epoch + 1, "step": step, "loss": loss.item(),
                               "lr": lr, "clips_per_s": rate})
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and batch_index + 1 < len(train_loader):
                    saver.save(epoch=epoch, batch=batch_index + 1, step=step, skipped=skipped_indices,
                               nonfinite=nonfinite)
        bar.close()
        if step == 0:
            if nonfinite:
                _stop_on_nonfinite(log, output, epoch, step, bad_loss, nonfinite, cfg, saver)
            raise NoTrainingStepError(_no_step_message(train_set, skipped_indices, accelerator))
        last = epoch + 1 == cfg.epochs
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            result = task.evaluate(step_model, val_loader, accelerator)
            log.write({"event": "eval", "epoch": epoch + 1, "step": step, **flatten_metrics(result)})
            accelerator.print(f"epoch {epoch + 1}: val {task.summary(result)}")
        accelerator.wait_for_everyone()
        saver.save(epoch=epoch + 1, batch=0, step=step, skipped=skipped_indices, nonfinite=nonfinite)
    skipped = len(_gather_set(skipped_indices, accelerator))
    if skipped:
        fraction = skipped / max(1, len(train_set))
        accelerator.print(f"skipped {skipped} unreadable training videos (see the warnings above for which)")
        if fraction > cfg.max_skip_fraction:
            logger.warning("%.1f%% of the training videos (%d of %d) were unreadable, more than max_skip_fraction "
                           "%.1f%%: check the list and the data root", 100 * fraction, skipped, len(train_set),
                           100 * cfg.max_skip_fraction)
    if accelerator.is_main_process:
        log.write({"event": "done", "step": step, "train_skipped": skipped, "num_processes": accelerator.num_processes,
                   "nonfinite_steps": nonfinite})
        log.close()
        plot_curves(output / METRICS_FILE, output / "curve.png", metric=getattr(task, "primary_metric", "top1"),
                    title=_curve_title(unwrapped_model, output))
    accelerator.end_training()
    return {**result, "train_skipped": skipped, "steps": step, "nonfinite_steps": nonfinite}


def compiled(model):
    """``torch.compile(model)`` with the backend ``ADAPTVID_COMPILE_BACKEND`` names (default inductor, which
    needs a C compiler on CPU; aot_eager checks the graph capture without code generation)."""
    return torch.compile(model, backend=os.environ.get("ADAPTVID_COMPILE_BACKEND", "inductor"))


def _set_efficiency(model, cfg: TrainConfig) -> None:
    """Put the config's gradient checkpointing and token dropping on the backbone (they act in training
    mode only, so evaluation is unchanged); token dropping is refused by methods that need the full grid."""
    from ..methods.registry import check_token_drop

    check_token_drop([name for name, _ in getattr(model, "methods", [])], cfg.token_drop)
    model.backbone.grad_checkpoint = cfg.grad_checkpoint
    model.backbone.token_drop = cfg.token_drop


def _align_schedule(scheduler, optimizer, schedule: Schedule, step: int) -> None:
    """A checkpoint of an adaptvid before exact resume stepped its schedule once per process per optimiser step;
    the schedule now counts optimiser steps: put it at ``step``."""
    if scheduler.last_epoch == step:
        return
    logger.warning("the checkpoint's schedule was at %d scheduler steps for %d optimiser steps (written by an older "
                   "adaptvid under several processes); continuing it at step %d", scheduler.last_epoch, step, step)
    scheduler.last_epoch = step
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * schedule.factor(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _all_finite(loss: torch.Tensor, accelerator) -> bool:
    """Whether the loss is finite on every process (one small all-reduce under several)."""
    finite = torch.isfinite(loss.detach()).all()
    if accelerator.num_processes == 1:
        return bool(finite.item())
    bad = (~finite).to(torch.float32).reshape(1)
    return float(accelerator.reduce(bad, reduction="sum").item()) == 0.0


def _stop_on_nonfinite(log: MetricsLog, output: Path, epoch: int, step: int, loss, count: int, cfg: TrainConfig,
                       saver: "_Saver") -> None:
    log.write({"event": "stopped", "reason": "non-finite loss", "epoch": epoch + 1, "step": step,
               "nonfinite_steps": count})
    log.close()
    kept = saver.last_saved
    why = (f"more than max_nan_steps={cfg.max_nan_steps}" if count > cfg.max_nan_steps
           else "and no optimiser step was left")
    raise NonFiniteLossError(
        f"the training loss was not finite ({loss}; {count} time(s) by epoch {epoch + 1}, step {step + 1}), {why}: "
        "stopped. Those steps were skipped and nothing non-finite was saved; "
        + (f"the last good checkpoint in {output} (epoch {kept[0]}, step {kept[1]}) is kept and can be resumed"
           if kept else f"{output} holds the checkpoint it had before this run, if any")
        + ". Lower the learning rate (--lr), use --precision bf16 rather than fp16, check the data, or allow a few "
        "such steps with --max-nan-steps N")


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() + 128
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values()) + 64
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value) + 16
    return 16


class _Saver:
    """Writes checkpoints of one run: every process takes part (random-generator states and skipped videos are
    gathered), the main process writes the unit, and every process learns whether it worked."""

    def __init__(self, accelerator, model, optimizer, scheduler, output: Path, cfg: TrainConfig, task, log: MetricsLog,
                 class_names, extra: dict, schedule: Schedule, steps_per_epoch: int, train_size: int) -> None:
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.output, self.cfg, self.task, self.log = output, cfg, task, log
        self.class_names, self.extra, self.schedule = class_names, extra, schedule
        self.steps_per_epoch, self.train_size = steps_per_epoch, train_size
        self.last_saved: Optional[tuple[int, int]] = None

    def save(self, *, epoch: int, batch: int, step: int, skipped: set[int], nonfinite: int) -> None:
        accelerator = self.accelerator
        states = _gather_objects(rng_state(self.task), accelerator)
        skipped_all = sorted(_gather_set(skipped, accelerator))
        code, error = 0, None
        if accelerator.is_main_process:
            try:
                self._write(epoch, batch, step, states, skipped_all, nonfinite)
            except NonFiniteLossError as failure:
                code, error = 1, failure
            except Exception as failure:   # CheckpointSaveError (a full disk...) or anything else
                code, error = 2, failure
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(code)], device=accelerator.device)
            code = int(accelerator.reduce(flag, reduction="sum").item())
        if code:
            if error is None:
                kind = NonFiniteLossError if code == 1 else CheckpointSaveError
                error = kind("the main process could not save the checkpoint (see its error); stopped")
            raise error
        self.last_saved = (epoch, step)

    def _write(self, epoch: int, batch: int, step: int, states: list, skipped: list[int], nonfinite: int) -> None:
        tensors = trainable_state(self.model)
        bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            kept = (f"the last good checkpoint (epoch {self.last_saved[0]}, step {self.last_saved[1]}) is kept"
                    if self.last_saved else "nothing was saved")
            raise NonFiniteLossError(
                f"the trained tensors became non-finite by step {step} ({len(bad)} of them, e.g. {bad[:3]}): not saved "
                f"into {self.output}; {kept}. Lower the learning rate (--lr) or use --precision bf16 rather than fp16")
        text = config_text(self.model, self.class_names, self.extra, self.output)
        state = {
            "format": STATE_FORMAT,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": epoch, "batch": batch, "step": step,
            "schedule": self.schedule.to_dict(), "steps_per_epoch": self.steps_per_epoch,
            "num_processes": self.accelerator.num_processes, "train_size": self.train_size,
            "train": dataclasses.asdict(self.cfg), "rng": states, "skipped_indices": skipped,
            "nonfinite_steps": nonfinite, "metrics_lines": self.log.lines,
        }
        estimated = {WEIGHTS_FILE: _tensor_bytes(tensors), CONFIG_FILE: len(text.encode()),
                     STATE_FILE: _tensor_bytes(state) + 4096}
        write_unit(self.output,
                   {WEIGHTS_FILE: lambda path: write_weights(tensors, path),
                    CONFIG_FILE: lambda path: path.write_text(text),
                    STATE_FILE: lambda path: torch.save(state, path)},
                   {"epoch": epoch, "batch": batch, "step": step}, estimated)


def _gather_objects(obj, accelerator) -> list:
    """``obj`` of every process, in process order."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))


def _curve_title(model, output: Path) -> str:
    methods = ",".join(name for name, _ in getattr(model, "methods", [])) or "?"
    return f"{getattr(model.backbone, 'name', '?')} + {methods} -> {output}"


def _fallback_batch(train_set, device, collate=collate_videos) -> Optional[dict]:
    """The first readable item of the training set as a one-clip batch on ``device`` (None if none is)."""
    for index in range(len(train_set)):
        batch = collate([train_set[index]])
        if batch["video"] is not None:
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return None


def _gather_set(indices: set[int], accelerator) -> set[int]:
    """The union of every process's set of dataset indices."""
    if accelerator.num_processes == 1:
        return set(indices)
    from accelerate.utils import gather_object

    return {i for part in gather_object([sorted(indices)]) for i in part}


def _no_step_message(train_set, skipped_indices: set[int], accelerator) -> str:
    unreadable = sorted(_gather_set(skipped_indices, accelerator))
    samples = getattr(train_set, "samples", None)
    first = [samples[i].path for i in unreadable[:3]] if samples is not None else unreadable[:3]
    return (f"no optimiser step was taken: {len(unreadable)} of {len(train_set)} training videos were unreadable "
            f"(first: {first}); nothing was saved")


def _progress(cfg: TrainConfig, accelerator, total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial,
                disable=not (cfg.progress and accelerator.is_local_main_process), dynamic_ncols=True, leave=False)
