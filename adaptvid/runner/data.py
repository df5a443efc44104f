"""The data side of a run: samples from a list file or a class-folder tree, the training and test
datasets a model's preprocessing asks for, the evaluation loader, and the demo data."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import DataLoader

from ..data import VideoDataset, VideoSample, VideoTransform, collate_videos, folder_dataset, read_list_file

logger = logging.getLogger("adaptvid")
DEFAULT_DEMO_DIR = "adaptvid_demo/data"
# Full-size decoding by default: benchmarks/bench_data.py measured no clear gain from reduced-size decoding
# of H.264 files (decoding every frame up to the last sampled one dominates) and a larger change of the
# model input (colour: mean 2-5/255) than a change of resize interpolation. `auto` pays for JPEG frame
# folders where libjpeg's DCT scaling applies (1080p), so it stays one setting away.
DEFAULT_DECODE_SHORT_SIDE = None
_OFF = (None, False, 0, "off", "none", "null", "full")


def decode_short_side(data: dict):
    """``data.decode_short_side``: ``auto`` (the transform's needs, see ``VideoDataset``), a short side in
    pixels, or off (``off`` / ``null`` / ``false`` / ``0``: full-size decoding)."""
    value = data.get("decode_short_side", DEFAULT_DECODE_SHORT_SIDE)
    if isinstance(value, str):
        value = value.strip().lower()
        value = int(value) if value.isdigit() else value
    if value in _OFF:
        return None
    if value == "auto" or value is True:
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"data.decode_short_side must be auto, a short side in pixels or off, got {value!r} "
                     "(e.g. --set data.decode_short_side=auto)")


def _normalised(name: str) -> str:
    """Class-name spelling for matching folder names: case and `_`/`-`/space differences ignored."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def match_folder_classes(root: str, found: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """The label of each class folder in ``found`` under ``class_names`` (a checkpoint's or a class file's):
    exact names first, then the same name up to case and ``_``/``-``/space (``square_growing`` is
    ``square growing``). A folder that matches no class is an error that shows both spellings."""
    exact = {name: i for i, name in enumerate(class_names)}
    loose = {_normalised(name): i for i, name in enumerate(class_names)}
    labels, unmatched = [], []
    for folder in found:
        label = exact.get(folder, loose.get(_normalised(folder)))
        if label is None:
            unmatched.append(folder)
        labels.append(label)
    if unmatched:
        raise ValueError(f"{root}: class folder(s) {unmatched[:5]} match none of the {len(class_names)} class names "
                         f"(e.g. {list(class_names)[:5]}); rename the folders or pass a list file with labels")
    return labels


def load_samples(path: str, data_root: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 allow_outside_root: bool = False) -> tuple[list[VideoSample], Optional[list[str]]]:
    """Samples from a list file, or from a ``<class>/<video>`` folder tree (its sub-folders are the classes).

    Returns ``(samples, class names)``: for a folder tree its folder names (labels re-numbered onto
    ``class_names`` when given, matched by :func:`match_folder_classes`), for a list file None.
    """
    if Path(path).is_dir():
        samples, found = folder_dataset(path)
        if class_names is None:
            return samples, found
        labels = match_folder_classes(path, found, class_names)
        return [VideoSample(s.path, labels[s.label]) for s in samples], list(class_names)
    # with the class count known, the reader refuses the two silent misreads (1-based UCF lists, HMDB flag files)
    return read_list_file(path, data_root, allow_outside_root=allow_outside_root,
                          num_classes=len(class_names) if class_names else None, classes_from="the class file"), None


def check_labels(samples: Sequence[VideoSample], num_classes: int, source: str, classes_from: str) -> None:
    """Refuse labels the model has no class for (they would score as silent wrong answers)."""
    bad = [s for s in samples if s.label >= num_classes]
    if bad:
        raise ValueError(f"{source}: label {bad[0].label} of {bad[0].path} is out of range for the {num_classes} "
                         f"classes of {classes_from} ({len(bad)} such videos); labels are 0..{num_classes - 1}")


def make_transform(model, data: dict, train: bool, default_scale=(0.25, 1.0)) -> VideoTransform:
    """The clip transform for ``model``: its weights' size, mean, std and interpolation (bicubic for CLIP),
    and the run's data settings (training crops and augmentation; the test-time short side)."""
    pp = model.backbone.preprocess
    if not train:
        return VideoTransform(pp.image_size, pp.mean, pp.std, train=False, interpolation=pp.interpolation,
                              short_side=data.get("short_side") or pp.image_size)
    return VideoTransform(pp.image_size, pp.mean, pp.std, train=True, hflip=bool(data.get("hflip", False)),
                          scale=tuple(data.get("scale", default_scale)), randaugment=data.get("randaugment"),
                          random_erasing=float(data.get("random_erasing") or 0.0),
                          color_jitter=float(data.get("color_jitter") or 0.0),
                          color_jitter_prob=float(data.get("color_jitter_prob", 0.8)),
                          grayscale=float(data.get("grayscale") or 0.0), interpolation=pp.interpolation)


def make_dataset(model, data: dict, samples, train: bool, views: str = "1x1", seed: int = 0) -> VideoDataset:
    """A training (random crops, augmentation) or test (resize, centre/multi crops, ``views``) dataset of
    ``samples`` sized for ``model``: its frames, its weights' preprocessing, the run's sampling settings."""
    common = dict(num_frames=model.num_frames, sampling=data.get("sampling", "segment"),
                  stride=int(data.get("stride", 4)), backend=data.get("backend"), seed=seed,
                  decode_short_side=decode_short_side(data))
    if train:
        return VideoDataset(samples, transform=make_transform(model, data, True), train=True, **common)
    return VideoDataset(samples, transform=make_transform(model, data, False), train=False, views=views, **common)


def eval_loader(model, data: dict, samples, views: str = "1x1", batch_size: int = 4,
                num_workers: int = 2) -> DataLoader:
    dataset = make_dataset(model, data, samples, train=False, views=views)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_videos)


def recorded_data(model) -> dict:
    """The data settings a checkpoint recorded (sampling, stride, backend, short side...)."""
    return dict((getattr(model, "checkpoint_config", None) or {}).get("extra", {}).get("data", {}))


def ensure_demo_data(directory) -> dict:
    """The demo's train/val lists, class names and captions in ``directory``, generated there if missing."""
    directory = Path(directory)
    names = {"train": directory / "train.txt", "val": directory / "val.txt", "classes": directory / "classes.txt",
             "captions_train": directory / "captions_train.jsonl", "captions_val": directory / "captions_val.jsonl"}
    if not all(p.exists() for p in names.values()):
        from ..data.demo import make_demo_data

        logger.info("generating the demo data in %s ...", directory)
        make_demo_data(directory)
    return {k: str(v) for k, v in names.items()}
