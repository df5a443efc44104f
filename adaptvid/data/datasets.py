"""The PyTorch dataset: sample indices, decode, transform; skip broken files."""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .lists import VideoSample, folder_dataset, read_class_names, read_list_file
from .readers import VideoReadError, open_video
from .sampling import dense_indices, parse_views, segment_indices, segment_indices_for_view
from .transforms import CLIP_MEAN, CLIP_STD, VideoTransform

__all__ = ["VideoSample", "read_list_file", "read_class_names", "folder_dataset",
           "VideoDataset", "collate_videos"]

logger = logging.getLogger("adaptvid.data")


class SeededEpochs:
    """Per-item randomness that does not depend on the worker: ``item_rng(index)`` is a numpy Generator
    seeded by (seed, epoch, index). The epoch lives in shared memory, so ``set_epoch`` reaches
    DataLoader workers that already exist. Call ``_init_epochs(seed)`` in ``__init__``."""

    def _init_epochs(self, seed: int) -> None:
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose random choices (clips, crops, captions) training items use."""
        self._epoch.fill_(int(epoch))

    def item_rng(self, index: int) -> np.random.Generator:
        """The Generator behind item `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


def decode_size(option, transform, train: bool) -> int | None:
    """The short side to decode at for ``option``: an int, None (full size) or "auto".

    "auto" needs a VideoTransform (its output size is known): evaluation
    decodes at the transform's test-time short side, which its resize would
    reach anyway; training decodes at size / sqrt(smallest crop area), so
    even the smallest random crop is still at least `size` pixels and is
    only ever shrunk.  Any other transform: full size.
    """
    if option != "auto":
        return None if option is None else int(option)
    if not isinstance(transform, VideoTransform):
        return None
    if not train:
        return transform.short_side
    return math.ceil(transform.size / math.sqrt(min(transform.scale)))


class VideoDataset(SeededEpochs, Dataset):
    """Videos -> {"video": tensor, "label": int, "index": int}, or None if unreadable.

    `video` is float32 (C, T, H, W) for views=(1, 1) and (V, C, T, H, W)
    otherwise, with V = clips * crops ordered clip-major (view = clip * crops
    + crop).  `views` is a (clips, crops) pair or a "CLIPSxCROPS" string and is
    for evaluation only.  `transform` defaults to a VideoTransform of `size`
    with CLIP mean/std; a custom one receives uint8 numpy (T, H, W, 3) and must
    return (C, T, H, W); for crops > 1 it also needs VideoTransform's
    `multi_crop(frames, num_crops)`.

    `decode_short_side` ("auto", an int or None) decodes frames already
    shrunk (see ``_decode_size``); `frames_fps` is the frame rate of frame
    folders (default 30).

    Training randomness comes from a numpy Generator seeded by
    (seed, epoch, index), so an item is the same whichever worker loads it and
    however many workers there are.  Call ``set_epoch`` before each epoch; the
    epoch lives in shared memory so persistent DataLoader workers see it too.
    """

    def __init__(self, samples: Sequence[VideoSample], num_frames: int = 8,
                 transform: Callable | None = None, sampling: str = "segment", stride: int = 4,
                 train: bool = True, views=(1, 1), size: int = 224,
                 backend: str | None = None, seed: int = 0,
                 decode_short_side: int | str | None = None, frames_fps: float | None = None):
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        self.views = parse_views(views) if isinstance(views, str) else tuple(int(v) for v in views)
        if len(self.views) != 2 or min(self.views) < 1:
            raise ValueError(f"views must be (clips, crops) with both >= 1, got {views!r}")
        if train and self.views != (1, 1):
            raise ValueError(f"views={views!r} is for evaluation; use train=False "
                             f"(training always takes one clip and one crop)")
        self.samples = list(samples)
        self.num_frames = int(num_frames)
        self.sampling = sampling
        self.stride = int(stride)
        self.train = bool(train)
        self.backend = backend
        self.frames_fps = frames_fps
        self._init_epochs(seed)
        self.transform = transform if transform is not None else VideoTransform(
            size, CLIP_MEAN, CLIP_STD, train=train)
        self.decode_short_side = decode_size(decode_short_side, self.transform, self.train)
        if self.views[1] > 1 and not hasattr(self.transform, "multi_crop"):
            raise ValueError("crops > 1 need a transform with a multi_crop(frames, "
                             "num_crops) method, such as VideoTransform")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]

    def _indices(self, num_total: int, rng, clip_index: int, num_clips: int) -> list[int]:
        if self.sampling == "dense":
            return dense_indices(num_total, self.num_frames, self.stride, self.train, rng,
                                 clip_index, num_clips)
        if self.train:
            return segment_indices(num_total, self.num_frames, True, rng)
        return segment_indices_for_view(num_total, self.num_frames, clip_index, num_clips)

    def _apply(self, frames: np.ndarray, rng) -> torch.Tensor:
        if isinstance(self.transform, VideoTransform):
            return self.transform(frames, rng=rng)
        return self.transform(frames)

    def _load(self, path: str, index: int) -> torch.Tensor:
        reader = open_video(path, backend=self.backend, short_side=self.decode_short_side,
                            fps=self.frames_fps)
        if self.train:
            rng = self.item_rng(index)
            frames = reader.get_frames(self._indices(len(reader), rng, 0, 1))
            return self._apply(frames, rng)
        clips, crops = self.views
        per_clip = [self._indices(len(reader), None, c, clips) for c in range(clips)]
        # One get_frames call: the file is decoded once for all clips.
        frames = reader.get_frames([i for indices in per_clip for i in indices])
        views = []
        for c in range(clips):
            clip = frames[c * self.num_frames:(c + 1) * self.num_frames]
            if crops == 1:
                views.append(self._apply(clip, None))
            else:
                views.extend(self.transform.multi_crop(clip, crops))
        return views[0] if self.views == (1, 1) else torch.stack(views)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            video = self._load(sample.path, index)
        except VideoReadError as exc:
            # The message names the file and the reason; the batch goes on without it.
            logger.warning("skipping unreadable video: %s", exc)
            return {"unreadable": int(index)}
        return {"video": video, "label": int(sample.label), "index": int(index)}


def collate_videos(batch: Sequence[dict | None]) -> dict:
    """Stack dataset items, dropping those of unreadable videos (``{"unreadable": index}`` or None).

    Returns {"video": (B, ...) float tensor, "label": LongTensor (B,),
    "index": LongTensor (B,), "skipped": number of dropped items,
    "skipped_indices": LongTensor of the dropped items' dataset indices (when known)}.
    If every item was dropped, "video" is None and label/index are empty, so the
    trainer can count the skips and move on to the next batch.
    """
    kept = [item for item in batch if item is not None and "unreadable" not in item]
    unreadable = [item["unreadable"] for item in batch if item is not None and "unreadable" in item]
    skipped = len(batch) - len(kept)
    lost = torch.tensor(unreadable, dtype=torch.long)
    if not kept:
        empty = torch.zeros(0, dtype=torch.long)
        return {"video": None, "label": empty, "index": empty.clone(), "skipped": skipped, "skipped_indices": lost}
    return {
        "video": torch.stack([item["video"] for item in kept]),
        "label": torch.tensor([item["label"] for item in kept], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "skipped": skipped,
        "skipped_indices": lost,
    }
