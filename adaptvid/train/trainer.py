"""The training loop on Accelerate: mixed precision, accumulation, multi-GPU, resume."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..checkpoint import CONFIG_FILE, save_adapter
from .config import TrainConfig
from .evaluate import evaluate
from .metrics import MetricsLog, plot_curves
from .mixing import make_mixer, soft_cross_entropy
from .schedule import parameter_groups, warmup_cosine

logger = logging.getLogger("adaptvid.train")
STATE_FILE = "trainer_state.pt"


class OutputExistsError(FileExistsError):
    pass


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
    from ..data import collate_videos

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
) -> dict:
    """Train ``model`` on ``train_set``, evaluating on ``val_set``; checkpoint into ``output`` every epoch.

    Returns the last evaluation's metrics (top1, top5, mean_class, num_videos, skipped)
    plus ``train_skipped`` and ``steps``.
    """
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

    train_loader = _loader(train_set, cfg, shuffle=True, batch_size=cfg.batch_size)
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
    if (cfg.mixup or cfg.cutmix) and unwrapped_model.from_features:
        raise ValueError("mixup / cutmix mix video clips; they cannot be used with cached features (--cache-features)")
    mixer = make_mixer(cfg, unwrapped_model.num_classes, accelerator.process_index)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    start_epoch, step = 0, 0
    if resume and (output / STATE_FILE).exists():
        start_epoch, step = _load_state(output, accelerator.unwrap_model(model), optimizer, scheduler)
        accelerator.print(f"resumed from {output} at epoch {start_epoch}, step {step}")

    log = MetricsLog(output, enabled=accelerator.is_main_process)
    result: dict = {}
    train_skipped = 0
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
            train_skipped += batch["skipped"]
            weight = 1.0
            if batch["video"] is None:  # every clip of this batch was unreadable
                if accelerator.num_processes == 1 or last_good is None:
                    continue
                # The other processes take a step and wait for this one's gradients:
                # re-run the last good batch with zero weight instead of leaving them hanging.
                batch, weight = last_good, 0.0
            last_good = batch
            with accelerator.accumulate(model):
                video, labels = batch["video"], batch["label"]
                if mixer is not None:   # soft targets, smoothing included
                    video, targets = mixer(video, labels, unwrapped_model.num_classes)
                    loss = soft_cross_entropy(model(video).float(), targets)
                else:
                    loss = torch.nn.functional.cross_entropy(model(video).float(), labels,
                                                             label_smoothing=cfg.label_smoothing)
                for extra in unwrapped_model.extra_losses:   # method regularisers (e.g. Open-VCLIP's IWO), on the
                    loss = loss + extra(unwrapped_model, batch["video"], labels)   # unmixed clips and hard labels
                accelerator.backward(loss * weight)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            clips += int(weight * len(batch["label"])) * accelerator.num_processes
            if accelerator.sync_gradients:
                step += 1
                rate = clips / max(1e-9, time.perf_counter() - tick)
                lr = scheduler.get_last_lr()[-1]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == 1:
                    log.write({"event": "train", "epoch": epoch + 1, "step": step, "loss": loss.item(),
                               "lr": lr, "clips_per_s": rate})
        bar.close()
        last = epoch + 1 == cfg.epochs
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            result = evaluate(model, val_loader, accelerator)
            log.write({"event": "eval", "epoch": epoch + 1, "step": step, **result})
            accelerator.print(
                f"epoch {epoch + 1}: val top1 {result['top1']:.2f}%  top5 {result['top5']:.2f}%  "
                f"mean class {result['mean_class']:.2f}%  ({result['num_videos']} videos, {result['skipped']} skipped)"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            save_adapter(unwrapped, output, class_names=class_names,
                         extra={"train": dataclasses.asdict(cfg), **(extra_config or {})})
            _save_state(output, optimizer, scheduler, epoch + 1, step)
    skipped = int(accelerator.reduce(torch.tensor(train_skipped, device=accelerator.device), "sum").item())
    if skipped:
        accelerator.print(f"skipped {skipped} unreadable training videos (see the warnings above for which)")
    if accelerator.is_main_process:
        log.write({"event": "done", "step": step, "train_skipped": skipped})
        log.close()
        plot_curves(output / "metrics.jsonl", output / "curve.png")
    accelerator.end_training()
    return {**result, "train_skipped": skipped, "steps": step}


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
    from ..checkpoint import load_trainable

    load_trainable(model, output)
    # weights_only: the state holds tensors, numbers and strings only — nothing is unpickled.
    state = torch.load(output / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), int(state["step"])
