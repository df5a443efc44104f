"""Cached-feature training for methods whose backbone is frozen and untouched.

The first pass runs the frozen backbone over every training (and validation)
clip once and stores what the readout consumes (``VideoModel.backbone_features``)
in safetensors shards; every epoch then trains the readout, decoder and head
from those tensors without touching the backbone.

Trade-off: the cached clips are the ones sampled and augmented on that one
pass (epoch 0's random segments and crops); later epochs see the same clips
instead of fresh augmentations. Good for linear probes, decoders and side
networks on large sets; not a substitute for augmentation on small ones.

Layout: ``DIR/<fingerprint>/{train,val}-NNNNN.safetensors`` (keys ``features``,
``labels``, ``indices``) + ``meta.json``; the fingerprint covers the backbone,
its weights, the readout's inputs, the list of videos, the sampling and the
decode size, so a changed setting never reads stale features.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger("adaptvid.train")
SHARD_SIZE = 512


def fingerprint(model, dataset, split: str) -> str:
    t = dataset.transform
    decoder_layers = list(getattr(model.decoder, "layers", [])) if model.decoder is not None else None
    items = {
        "split": split, "backbone": model.backbone.name, "weights": getattr(model, "weights", None),
        "frames": dataset.num_frames, "sampling": dataset.sampling, "stride": dataset.stride,
        "views": list(dataset.views), "seed": dataset.seed, "train": dataset.train,
        "transform": repr(t), "scale": list(getattr(t, "scale", [])), "decoder_layers": decoder_layers,
        "samples": [(s.path, s.label) for s in dataset.samples],
    }
    # Reduced-size decoding changes the pixels a little: its own key. Left out when off, so the caches
    # written before the setting existed (all full-size) keep their fingerprint.
    if getattr(dataset, "decode_short_side", None) is not None:
        items["decode_short_side"] = dataset.decode_short_side
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureDataset(Dataset):
    """Items ``{"video": features, "label", "index"}`` read lazily from the shards of one split."""

    def __init__(self, directory: Path, split: str) -> None:
        self.shards = sorted(Path(directory).glob(f"{split}-*.safetensors"))
        self.rows: list[tuple[int, int]] = []
        self.skipped = 0
        for shard_index, shard in enumerate(self.shards):
            with safe_open(str(shard), framework="pt") as handle:
                count = handle.get_slice("labels").get_shape()[0]
            self.rows.extend((shard_index, row) for row in range(count))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        shard_index, row = self.rows[index]
        handle = self._handle(shard_index)
        return {
            "video": handle.get_slice("features")[row].float(),
            "label": int(handle.get_slice("labels")[row]),
            "index": int(handle.get_slice("indices")[row]),
        }

    def _handle(self, shard_index: int):
        # Shards stay open (memory-mapped) for the life of the process; reopened in each loader worker.
        handles = self.__dict__.setdefault("_handles", {})
        if shard_index not in handles:
            handles[shard_index] = safe_open(str(self.shards[shard_index]), framework="pt")
        return handles[shard_index]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_handles"}


@torch.no_grad()
def extract(model, dataset, directory: Path, split: str, batch_size: int = 8, num_workers: int = 2) -> dict:
    """Run the frozen backbone over ``dataset`` once; write shards of fp16 features. Returns meta."""
    from ..data import collate_videos

    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_videos)
    device = next(model.parameters()).device
    model.eval()
    buffer: dict[str, list] = {"features": [], "labels": [], "indices": []}
    shard, written, skipped = 0, 0, 0

    def flush():
        nonlocal shard, written
        if not buffer["labels"]:
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in buffer.items()}
        save_file(tensors, str(directory / f"{split}-{shard:05d}.safetensors"))
        written += len(tensors["labels"])
        shard += 1
        for v in buffer.values():
            v.clear()

    for batch in loader:
        skipped += batch["skipped"]
        if batch["video"] is None:
            continue
        features = model.backbone_features(batch["video"].to(device))
        buffer["features"].append(features.half().cpu())
        buffer["labels"].append(batch["label"])
        buffer["indices"].append(batch["index"])
        if sum(len(x) for x in buffer["labels"]) >= SHARD_SIZE:
            flush()
    flush()
    return {"videos": written, "skipped": skipped}


def cached_dataset(model, dataset, cache_dir, split: str, batch_size: int = 8, num_workers: int = 2) -> FeatureDataset:
    """The features of ``dataset`` from ``cache_dir``, extracting them first if they are not there yet."""
    if not model.cacheable():
        raise ValueError(
            "--cache-features needs a backbone that is frozen and untouched by the method "
            "(frozen, decoders, side networks); this model trains inside the backbone"
        )
    if dataset.views != (1, 1):
        raise ValueError("--cache-features caches single-view clips; evaluate multi-view without the cache")
    directory = Path(cache_dir) / fingerprint(model, dataset, split)
    meta_path = directory / f"{split}.meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        logger.info("reading cached %s features from %s (%d videos)", split, directory, meta["videos"])
    else:
        for stale in directory.glob(f"{split}-*.safetensors"):  # an interrupted extraction
            stale.unlink()
        meta = extract(model, dataset, directory, split, batch_size, num_workers)
        meta_path.write_text(json.dumps(meta) + "\n")
    features = FeatureDataset(directory, split)
    features.skipped = meta["skipped"]
    return features
