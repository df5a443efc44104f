"""The training loop on Accelerate: mixed precision, accumulation, multi-GPU, resume."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..checkpoints import CONFIG_FILE, load_trainable, save_adapter
from ..data import collate_videos
from ..tasks import ClassificationTask, Task
from .config import TrainConfig
from .metrics import MetricsLog, plot_curves
from .schedule import parameter_groups, warmup_cosine

logger = logging.getLogger("adaptvid.train")
STATE_FILE = "trainer_state.pt"


class OutputExistsError(FileExistsError):
    pass


class NoTrainingStepError(RuntimeError):
    """Training took no optimiser step (every training video unreadable): nothing is saved."""


def check_output_dir(output: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite a finished or running training without being asked."""
    if (output / CONFIG_FILE).exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{output} already holds a checkpoint; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output"
        )
    if overwrite and not resume:
        for name in ("metrics.jsonl", STATE_FILE):
            (output / name).unlink(missing_ok=True)


def _loader(dataset, cfg: TrainConfig, shuffle: bool, batch_size: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=cfg.num_workers,
        collate_fn=collate_videos, drop_last=False, persistent_workers=cfg.num_workers > 0,
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
) -> dict:
    """Train ``model`` on ``train_set`` for ``task`` (default: classification with the config's label
    smoothing and Mixup/CutMix), evaluating on ``val_set``; checkpoint into ``output`` every epoch.

    Returns the last evaluation's metrics (classification: top1, top5, mean_class, num_videos,
    skipped) plus ``train_skipped`` and ``steps``.
    """
    task = task if task is not None else ClassificationTask.from_train_config(cfg)
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    output = Path(output)
    accelerator = Accelerator(
        mixed_precision=cfg.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.is_main_process:
        check_output_dir(output, resume, overwrite)
        output.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    train_loader = _loader(train_set, cfg, shuffle=cfg.shuffle, batch_size=cfg.batch_size)
    val_loader = _loader(val_set, cfg, shuffle=False, batch_size=max(1, cfg.batch_size // 2)) if val_set else None
    groups = parameter_groups(model, cfg.lr, cfg.resolved_backbone_lr, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, -(-len(train_loader) // (cfg.grad_accum * accelerator.num_processes)))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))

    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    unwrapped_model = accelerator.unwrap_model(model)
    task.prepare(unwrapped_model, accelerator.process_index)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    start_epoch, step = 0, 0
    if resume and (output / STATE_FILE).exists():
        start_epoch, step = _load_state(output, accelerator.unwrap_model(model), optimizer, scheduler)
        accelerator.print(f"resumed from {output} at epoch {start_epoch}, step {step}")

    log = MetricsLog(output, enabled=accelerator.is_main_process)
    result: dict = {}
    skipped_indices: set[int] = set()   # unique: the distributed sampler's padding repeats videos
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        bar = _progress(cfg, accelerator, len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}")
        tick, clips, last_good = time.perf_counter(), 0, None
        for batch in train_loader:
            bar.update(1)
            skipped_indices.update(batch.get("skipped_indices", torch.zeros(0)).tolist())
            weight = 1.0
            if batch["video"] is None:  # every clip of this batch was unreadable
                if accelerator.num_processes == 1:
                    continue
                # The other processes take a step and wait for this one's gradients: every process
                # takes part in every step, so this one re-runs a readable batch with zero weight.
                if last_good is None:
                    last_good = _fallback_batch(train_set, accelerator.device)
                if last_good is None:   # nothing in the whole set is readable: every process stops alike
                    continue
                batch, weight = last_good, 0.0
            last_good = batch
            with accelerator.accumulate(model):
                loss = task.loss(model, batch, unwrapped_model)
                accelerator.backward(loss * weight)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            clips += int(weight * task.batch_size(batch)) * accelerator.num_processes
            if accelerator.sync_gradients:
                step += 1
                rate = clips / max(1e-9, time.perf_counter() - tick)
                lr = scheduler.get_last_lr()[-1]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == 1:
                    log.write({"event": "train", "epoch": epoch + 1, "step": step, "loss": loss.item(),
                               "lr": lr, "clips_per_s": rate})
        bar.close()
        if step == 0:
            raise NoTrainingStepError(_no_step_message(train_set, skipped_indices, accelerator))
        last = epoch + 1 == cfg.epochs
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            result = task.evaluate(model, val_loader, accelerator)
            log.write({"event": "eval", "epoch": epoch + 1, "step": step, **result})
            accelerator.print(f"epoch {epoch + 1}: val {task.summary(result)}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            save_adapter(unwrapped, output, class_names=class_names,
                         extra={"train": dataclasses.asdict(cfg), **(extra_config or {})})
            _save_state(output, optimizer, scheduler, epoch + 1, step)
    skipped = len(_gather_set(skipped_indices, accelerator))
    if skipped:
        fraction = skipped / max(1, len(train_set))
        accelerator.print(f"skipped {skipped} unreadable training videos (see the warnings above for which)")
        if fraction > cfg.max_skip_fraction:
            logger.warning("%.1f%% of the training videos (%d of %d) were unreadable, more than max_skip_fraction "
                           "%.1f%%: check the list and the data root", 100 * fraction, skipped, len(train_set),
                           100 * cfg.max_skip_fraction)
    if accelerator.is_main_process:
        log.write({"event": "done", "step": step, "train_skipped": skipped, "num_processes": accelerator.num_processes})
        log.close()
        plot_curves(output / "metrics.jsonl", output / "curve.png")
    accelerator.end_training()
    return {**result, "train_skipped": skipped, "steps": step}


def _fallback_batch(train_set, device) -> Optional[dict]:
    """The first readable item of the training set as a one-clip batch on ``device`` (None if none is)."""
    for index in range(len(train_set)):
        batch = collate_videos([train_set[index]])
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


def _progress(cfg: TrainConfig, accelerator, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (cfg.progress and accelerator.is_local_main_process),
                dynamic_ncols=True, leave=False)


def _save_state(output: Path, optimizer, scheduler, epoch: int, step: int) -> None:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step}
    tmp = output / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(output / STATE_FILE)


def _load_state(output: Path, model, optimizer, scheduler) -> tuple[int, int]:
    load_trainable(model, output)
    # weights_only: the state holds tensors, numbers and strings only — nothing is unpickled.
    state = torch.load(output / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), int(state["step"])
