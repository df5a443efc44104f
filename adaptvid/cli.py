"""The `adaptvid` command: adapt, eval, predict, demo-data, list, recipes."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

# Flags that map onto a recipe setting: flag dest -> dotted path in the settings.
SETTING_FLAGS = {
    "backbone": "backbone", "method": "method", "weights": "weights",
    "frames": "model.frames", "head_dropout": "model.head_dropout",
    "train_list": "data.train", "val_list": "data.val", "data_root": "data.root", "classes": "data.classes",
    "sampling": "data.sampling", "stride": "data.stride", "hflip": "data.hflip", "backend": "data.backend",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "backbone_lr": "train.backbone_lr",
    "weight_decay": "train.weight_decay", "warmup_epochs": "train.warmup_epochs", "grad_accum": "train.grad_accum",
    "clip_grad": "train.clip_grad", "precision": "train.precision", "seed": "train.seed",
    "num_workers": "train.num_workers", "views": "train.views", "eval_every": "train.eval_every",
    "label_smoothing": "train.label_smoothing", "init_from": "model.init_from",
}
DEFAULT_DEMO_DIR = "adaptvid_demo/data"


def _method_option_fields() -> dict[str, dataclasses.Field]:
    from .methods import list_methods

    fields: dict[str, dataclasses.Field] = {}
    for spec in list_methods().values():
        for f in dataclasses.fields(spec.config_cls):
            fields.setdefault(f.name, f)
    return fields


def _value_type(f: dataclasses.Field):
    from .recipes import parse_value

    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        return lambda text: str(text).lower() in ("1", "true", "yes", "on")
    if isinstance(default, (int, float, str)):
        return type(default)
    return parse_value


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="train a video model from an image backbone",
                       description="Train a video model. Settings come from (lowest first): the recipe, "
                                   "these flags, then --set KEY=VALUE.")
    p.add_argument("--recipe", help="a recipe name (adaptvid recipes list) or a .yaml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting by dotted path, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--demo", action="store_true", help="train on the generated demo task (made if missing)")
    p.add_argument("--demo-dir", default=DEFAULT_DEMO_DIR, help=f"where the demo data lives (default {DEFAULT_DEMO_DIR})")
    p.add_argument("--backbone", help="backbone name (adaptvid list), default clip")
    p.add_argument("--method", help="method name(s), comma-separated, e.g. st-adapter")
    p.add_argument("--weights", help="backbone weights: a local file/folder, or 'random' (default: the hub's)")
    p.add_argument("--train", dest="train_list",
                   help="training list file ('relative/path label' per line) or a folder of <class>/<video> folders")
    p.add_argument("--val", dest="val_list", help="validation list file or class-folder tree")
    p.add_argument("--data-root", help="folder the list paths are relative to (default: the list's folder)")
    p.add_argument("--classes", help="class-names file, one per line in label order")
    p.add_argument("--frames", type=int, help="frames per clip (default 8)")
    p.add_argument("--sampling", choices=["segment", "dense"], help="segment (TSN) or dense fixed-stride sampling")
    p.add_argument("--stride", type=int, help="frame stride for dense sampling")
    p.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips in training")
    p.add_argument("--backend", choices=["decord", "pyav", "torchcodec"], help="video reader (default decord)")
    p.add_argument("--head-dropout", type=float, help="dropout before the linear head")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="clips per process per step")
    p.add_argument("--lr", type=float, help="learning rate of new modules")
    p.add_argument("--backbone-lr", type=float, help="learning rate of unfrozen backbone weights (default lr/10)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--clip-grad", type=float, help="gradient-norm clipping (0: off)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], help="mixed precision")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, help="data-loader workers")
    p.add_argument("--views", help="validation views CLIPSxCROPS, e.g. 3x1")
    p.add_argument("--eval-every", type=int, help="evaluate every N epochs")
    p.add_argument("--output", help="checkpoint folder (default runs/<recipe or method>)")
    p.add_argument("--resume", action="store_true", help="continue the training in --output from its last epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cache-features", metavar="DIR",
                   help="frozen-backbone methods only: run the backbone once, store its outputs in DIR, "
                        "train every epoch from them (the first pass's augmentation is reused)")
    p.add_argument("--init-from", metavar="CHECKPOINT_DIR",
                   help="load the image- and text-tower tensors of a checkpoint that fine-tuned them (e.g. vifi-clip's) "
                        "into this model's towers before training (ViFi-CLIP's bridge and prompt)")
    _add_method_options(p)


def _add_method_options(p) -> None:
    """One --flag per method config field (dest opt_<field>); shared by adapt and profile."""
    options = p.add_argument_group("method options (go to every chosen method with that field)")
    for name, f in sorted(_method_option_fields().items()):
        options.add_argument("--" + name.replace("_", "-"), dest=f"opt_{name}", type=_value_type(f),
                             help=f.metadata.get("help", ""))


def _method_options(args: argparse.Namespace) -> dict:
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("opt_") and value is not None}


def _add_zero_shot(p) -> None:
    p.add_argument("--backbone", help="with --zero-shot and no --checkpoint: a CLIP backbone name (adaptvid list)")
    p.add_argument("--zero-shot", action="store_true", help="classify by text against the names in --classes")
    p.add_argument("--classes", help="class names file (one per line)")
    p.add_argument("--templates", help="prompt templates file, one per line with {} for the class name "
                                       "(default: the classifier's own, or adaptvid's default ensemble)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip for --backbone (default 8)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (or, zero-shot, a CLIP backbone) on a list file",
                       description="Evaluate a trained checkpoint on its classes; with --zero-shot, score the videos "
                                   "against the class names of --classes instead (a checkpoint trained on other "
                                   "classes, or a plain CLIP backbone: the frozen zero-shot baseline).")
    p.add_argument("--checkpoint", help="folder written by adaptvid adapt / save_adapter")
    _add_zero_shot(p)
    p.add_argument("--data", required=True, help="list file ('relative/path label' per line) or class-folder tree")
    p.add_argument("--data-root", help="folder the list paths are relative to")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS, e.g. 4x3 (default 1x1)")
    p.add_argument("--weights", help="backbone weights to rebuild on (default: those recorded)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-5 classes for each video (of a checkpoint, or zero-shot)")
    p.add_argument("--checkpoint", help="folder written by adaptvid adapt / save_adapter")
    _add_zero_shot(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS")
    p.add_argument("--weights", help="backbone weights to rebuild on (default: those recorded)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="video embeddings of a list of videos, for other tasks",
                       description="Run a checkpoint (or a plain backbone: mean of its frame embeddings) over the "
                                   "videos of a list file or class-folder tree; write OUTPUT.safetensors "
                                   "(embeddings, labels, indices) and OUTPUT.json (the video paths in row order).")
    p.add_argument("--checkpoint", help="folder written by adaptvid adapt / save_adapter")
    p.add_argument("--backbone", help="instead of --checkpoint: a backbone name (its frozen frame embeddings, averaged)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip for --backbone (default 8)")
    p.add_argument("--weights", help="backbone weights (default: the hub's, or those the checkpoint recorded)")
    p.add_argument("--data", required=True, help="list file ('relative/path label' per line) or class-folder tree")
    p.add_argument("--data-root", help="folder the list paths are relative to")
    p.add_argument("--output", required=True, help="embeddings file, ending in .safetensors")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS; a video's embedding is their mean")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="parameters, FLOPs and activation memory of a method on a backbone",
                       description="Count parameters, forward FLOPs per view (and over the views) against the bare "
                                   "tower, and the activations one training step saves against full fine-tuning.")
    p.add_argument("--backbone", default="clip", help="backbone name (adaptvid list), default clip")
    p.add_argument("--method", required=True, help="method name(s), comma-separated, e.g. st-adapter")
    p.add_argument("--weights", help="backbone weights: a local file/folder, or 'random' to profile without "
                                     "downloading anything (default: the hub's)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS; total FLOPs = per view x clips x crops")
    p.add_argument("--batch", type=int, default=1, help="clips in the training step whose activations are measured")
    p.add_argument("--num-classes", type=int, default=400, help="classes of the linear head (default 400)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_method_options(p)


def _add_split(sub) -> None:
    p = sub.add_parser("split", help="evaluation-protocol splits: few-shot lists, base/novel class halves")
    kinds = p.add_subparsers(dest="split_kind", required=True)
    f = kinds.add_parser("few-shot", help="exactly K videos per class, chosen by a seed")
    f.add_argument("--list", required=True, dest="list_file", help="the full training list ('path label' per line)")
    f.add_argument("--shots", type=int, required=True, help="videos per class (the protocol: 2, 4, 8, 16)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--output", required=True, help="the list file to write")
    f.add_argument("--classes", help="class-names file: name classes in errors, and require every class present")
    f.add_argument("--allow-fewer", action="store_true", help="keep all videos of a class with fewer than K")
    b = kinds.add_parser("base-novel", help="split the classes into base and novel halves (ViFi-CLIP protocol)")
    b.add_argument("--classes", required=True, help="class-names file, one per line in label order")
    b.add_argument("--output-dir", required=True)
    b.add_argument("--list", nargs="*", default=[], dest="list_files", metavar="LIST",
                   help="list files to split too (the first is the training list), e.g. train.txt val.txt")
    b.add_argument("--order", choices=["index", "frequency", "random"], default="index",
                   help="base = first half by index (default), the most frequent classes of the training list, "
                        "or a seeded shuffle")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--shots", type=int, help="also write a K-shot base training list (the protocol: 16)")
    b.add_argument("--allow-fewer", action="store_true", help="with --shots: keep all videos of a class with fewer")


def cmd_split(args: argparse.Namespace) -> int:
    from . import protocols

    if args.split_kind == "few-shot":
        names = None
        if args.classes:
            from .data import read_class_names

            names = read_class_names(args.classes)
        chosen = protocols.few_shot(protocols.read_list_entries(args.list_file), args.shots, args.seed,
                                    args.allow_fewer, names)
        protocols.write_list(chosen, args.output)
        print(f"{len(chosen)} videos ({args.shots} per class, seed {args.seed}) -> {args.output}")
        return 0
    written = protocols.base_novel_split(args.classes, args.output_dir, args.list_files, args.order, args.seed,
                                         args.shots, args.allow_fewer)
    print(json.dumps(written, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="adaptvid", description="Turn frozen image models into video models.")
    parser.add_argument("--version", action="version", version=f"adaptvid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_adapt(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_embed(sub)
    _add_profile(sub)
    p = sub.add_parser("merge", help="fold mergeable methods (ZeroI2V, LoRA) into the backbone weights")
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint folder")
    p.add_argument("--output", required=True, help="folder for the merged checkpoint (whole tower included)")
    p.add_argument("--weights", help="backbone weights to rebuild on (default: those recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    p = sub.add_parser("demo-data", help="generate the demo videos, lists and class names")
    p.add_argument("dir", nargs="?", default=DEFAULT_DEMO_DIR)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="backbones and methods")
    _add_split(sub)
    p = sub.add_parser("recipes", help="list or show recipes")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?")
    return parser


# -- adapt -------------------------------------------------------------------------

def _set(settings: dict, path: str, value: Any) -> None:
    node = settings
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def adapt_settings(args: argparse.Namespace) -> dict:
    """Recipe, then explicit flags, then --set overrides."""
    from .recipes import apply_overrides, load_recipe

    recipe_name = args.recipe or ("demo" if args.demo else None)
    settings = load_recipe(recipe_name) if recipe_name else {"backbone": "clip", "method": "frozen"}
    settings = {k: v for k, v in settings.items() if k not in ("paper", "command", "description", "expected")}
    if args.method and recipe_name and args.method != settings["method"]:
        settings["options"] = _options_for(args.method, settings.get("options", {}), recipe_name)
    for dest, path in SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            _set(settings, path, value)
    for key, value in vars(args).items():
        if key.startswith("opt_") and value is not None:
            _set(settings, "options." + key[4:], value)
    settings = apply_overrides(settings, args.overrides)
    if args.demo:
        data = settings.setdefault("data", {})
        if not data.get("train"):
            paths = ensure_demo_data(Path(args.demo_dir))
            data.update(train=paths["train"], val=paths["val"], classes=paths["classes"], root=None)
    return settings


def _options_for(method: str, options: dict, recipe_name: str) -> dict:
    """Keep the recipe's method options that the newly chosen method(s) have; say which are dropped."""
    from .methods.registry import get_method, split_method_names

    valid = {f.name for name in split_method_names(method) for f in dataclasses.fields(get_method(name).config_cls)}
    dropped = sorted(set(options) - valid)
    if dropped:
        print(f"adaptvid: --method {method} replaces the recipe's method; ignoring recipe {recipe_name!r} "
              f"option(s) {', '.join(dropped)}", file=sys.stderr)
    return {k: v for k, v in options.items() if k in valid}


def ensure_demo_data(directory: Path) -> dict:
    names = {"train": directory / "train.txt", "val": directory / "val.txt", "classes": directory / "classes.txt"}
    if not all(p.exists() for p in names.values()):
        from .data.demo import make_demo_data

        print(f"generating the demo data in {directory} ...", file=sys.stderr)
        make_demo_data(directory)
    return {k: str(v) for k, v in names.items()}


def load_samples(path: str, data_root: Optional[str] = None, class_names: Optional[list[str]] = None):
    """Samples from a list file, or from a ``<class>/<video>`` folder tree (its sub-folders are the classes).

    Returns (samples, class_names or None). A folder's classes must match ``class_names`` when given.
    """
    from .data import folder_dataset, read_list_file

    if Path(path).is_dir():
        samples, found = folder_dataset(path)
        if class_names is not None and found != list(class_names):
            raise ValueError(f"{path}: its class folders {found[:5]}... differ from the classes {list(class_names)[:5]}...; "
                             "a folder dataset's sub-folders must be the same classes in the same order")
        return samples, found
    return read_list_file(path, data_root), None


def _datasets(model, data: dict, train_cfg, train_samples, val_samples):
    from .data import VideoDataset, VideoTransform

    pp = model.backbone.preprocess
    common = dict(num_frames=model.num_frames, sampling=data.get("sampling", "segment"),
                  stride=int(data.get("stride", 4)), backend=data.get("backend"), seed=train_cfg.seed)
    train_set = val_set = None
    if train_samples:
        transform = VideoTransform(pp.image_size, pp.mean, pp.std, train=True, hflip=bool(data.get("hflip", False)),
                                   scale=tuple(data.get("scale", (0.25, 1.0))), randaugment=data.get("randaugment"),
                                   random_erasing=float(data.get("random_erasing") or 0.0),
                                   color_jitter=float(data.get("color_jitter") or 0.0),
                                   color_jitter_prob=float(data.get("color_jitter_prob", 0.8)),
                                   grayscale=float(data.get("grayscale") or 0.0))
        train_set = VideoDataset(train_samples, transform=transform, train=True, **common)
    if val_samples:
        transform = VideoTransform(pp.image_size, pp.mean, pp.std, train=False,
                                   short_side=data.get("short_side") or pp.image_size)
        val_set = VideoDataset(val_samples, transform=transform, train=False, views=train_cfg.views, **common)
    return train_set, val_set


def cmd_adapt(args: argparse.Namespace) -> int:
    from .data import read_class_names
    from .model import build_model
    from .train import TrainConfig, fit

    settings = adapt_settings(args)
    data = settings.get("data", {})
    if not data.get("train"):
        raise SystemExit("adaptvid adapt: no training data; pass --train LIST (and --val LIST), a recipe with "
                         "data.train, or --demo")
    train_values = dict(settings.get("train", {}))
    if args.no_progress:
        train_values["progress"] = False
    if train_values.get("clip_grad") == 0:
        train_values["clip_grad"] = None
    unknown = set(train_values) - TrainConfig.field_names()
    if unknown:
        raise SystemExit(f"adaptvid adapt: unknown train setting(s) {sorted(unknown)}; "
                         f"valid: {sorted(TrainConfig.field_names())}")
    cfg = TrainConfig(**train_values)
    class_names = read_class_names(data["classes"]) if data.get("classes") else None
    train_samples, folder_classes = load_samples(data["train"], data.get("root"), class_names)
    class_names = class_names or folder_classes
    val_samples = load_samples(data["val"], data.get("root"), class_names)[0] if data.get("val") else None
    num_classes = len(class_names) if class_names else max(s.label for s in train_samples) + 1
    model_cfg = settings.get("model", {})
    model = build_model(settings["backbone"], settings["method"], num_classes, class_names=class_names,
                        weights=settings.get("weights"),
                        num_frames=int(model_cfg.get("frames", 8)), head_dropout=float(model_cfg.get("head_dropout", 0.0)),
                        **settings.get("options", {}))
    if model_cfg.get("init_from"):
        from .init_from import init_from

        loaded = init_from(model, model_cfg["init_from"])
        print(f"adaptvid: --init-from {model_cfg['init_from']}: loaded {loaded['loaded']} tower/text tensors, "
              f"skipped {len(loaded['skipped'])}", file=sys.stderr)
    train_set, val_set = _datasets(model, data, cfg, train_samples, val_samples)
    if args.cache_features:
        train_set, val_set = _cached(model, train_set, val_set, args.cache_features, cfg)
    if class_names is not None:
        too_big = [s for s in train_samples if s.label >= num_classes]
        if too_big:
            raise SystemExit(f"{data['train']}: label {too_big[0].label} of {too_big[0].path} is out of range "
                             f"for the {num_classes} classes in {data['classes']}")
    output = Path(args.output or Path("runs") / str(settings.get("name", settings["method"])).replace("/", "-"))
    from .model import count_parameters

    trainable, total = count_parameters(model)
    print(f"adaptvid: {settings['backbone']} + {settings['method']}: {trainable:,} trainable of {total:,} parameters; "
          f"{len(train_set)} training videos; output {output}", file=sys.stderr)
    result = fit(model, train_set, val_set, cfg, output, class_names=class_names, resume=args.resume,
                 overwrite=args.overwrite, extra_config={"data": {k: v for k, v in data.items() if k not in ("train", "val")}})
    if result.get("num_videos"):
        print(f"validation top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"mean class {result['mean_class']:.2f}%  ({result['num_videos']} videos) -> {output}")
    return 0


def _cached(model, train_set, val_set, cache_dir: str, cfg):
    """Swap the video datasets for cached backbone features (main process extracts, the others wait)."""
    from accelerate import PartialState

    from .train.feature_cache import cached_dataset

    with PartialState().main_process_first():
        train_set = cached_dataset(model, train_set, cache_dir, "train", cfg.batch_size, cfg.num_workers)
        if val_set is not None:
            val_set = cached_dataset(model, val_set, cache_dir, "val", cfg.batch_size, cfg.num_workers)
    model.from_features = True
    print(f"adaptvid: training from cached backbone features in {cache_dir} "
          f"({len(train_set)} training clips)", file=sys.stderr)
    return train_set, val_set


# -- eval / predict ------------------------------------------------------------------

def _eval_loader(model, data_settings: dict, samples, views: str, batch_size: int, num_workers: int, backend=None):
    from torch.utils.data import DataLoader

    from .data import VideoDataset, VideoTransform, collate_videos

    pp = model.backbone.preprocess
    transform = VideoTransform(pp.image_size, pp.mean, pp.std, train=False,
                               short_side=data_settings.get("short_side") or pp.image_size)
    dataset = VideoDataset(samples, num_frames=model.num_frames, transform=transform, train=False, views=views,
                           sampling=data_settings.get("sampling", "segment"), stride=int(data_settings.get("stride", 4)),
                           backend=backend or data_settings.get("backend"))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_videos)


def _recorded_data(model) -> dict:
    return (getattr(model, "checkpoint_config", {}).get("extra") or {}).get("data", {})


def _eval_model(args: argparse.Namespace):
    from .checkpoint import load_model
    from .data import read_class_names
    from .text import DEFAULT_TEMPLATES, read_templates
    from .zero_shot import set_classes, zero_shot_model

    if not args.zero_shot:
        if not args.checkpoint:
            raise SystemExit(f"adaptvid {args.command}: pass --checkpoint DIR (or --zero-shot --backbone NAME --classes FILE)")
        return load_model(args.checkpoint, weights=args.weights)
    if not args.classes:
        raise SystemExit(f"adaptvid {args.command} --zero-shot: pass --classes FILE with the class names to score")
    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit(f"adaptvid {args.command} --zero-shot: pass exactly one of --checkpoint DIR or --backbone NAME")
    names = read_class_names(args.classes)
    templates = read_templates(args.templates) if args.templates else None
    if args.backbone:
        return zero_shot_model(args.backbone, names, templates or DEFAULT_TEMPLATES, num_frames=args.frames,
                               weights=args.weights)
    return set_classes(load_model(args.checkpoint, weights=args.weights), names, templates)


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import parse_views
    from .train import evaluate

    parse_views(args.views)
    model = _eval_model(args)
    samples, _ = load_samples(args.data, args.data_root, model.class_names if Path(args.data).is_dir() else None)
    loader = _eval_loader(model, _recorded_data(model), samples, args.views, args.batch_size, args.num_workers)
    result = evaluate(model, loader)
    result["views"] = args.views
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  mean class {result['mean_class']:.2f}%  "
              f"({result['num_videos']} videos, {result['skipped']} skipped, views {args.views})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .data import VideoSample, parse_views

    parse_views(args.views)
    model = _eval_model(args).eval()
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    samples = [VideoSample(str(Path(v).resolve()), 0) for v in args.videos]
    loader = _eval_loader(model, _recorded_data(model), samples, args.views, batch_size=1, num_workers=0)
    results, failed = [], 0
    with torch.no_grad():
        for sample, batch in zip(samples, loader):
            if batch["video"] is None:
                failed += 1
                print(f"adaptvid predict: could not read {sample.path} (see the warning above)", file=sys.stderr)
                continue
            video = batch["video"]
            scores = model.forward_views(video) if video.ndim == 6 else model(video).softmax(-1)
            top = scores[0].topk(min(5, scores.shape[1]))
            results.append({"video": sample.path, "top5": [
                {"class": names[i], "label": int(i), "score": round(float(s), 6)} for s, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["video"])
            for rank, item in enumerate(r["top5"], 1):
                print(f"  {rank}. {item['class']:<30} {100 * item['score']:6.2f}%")
    return 1 if failed == len(samples) else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import parse_views
    from .embed import describe, embed_videos, save_embeddings
    from .model import build_model

    parse_views(args.views)
    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit("adaptvid embed: pass exactly one of --checkpoint DIR or --backbone NAME")
    if args.checkpoint:
        model = load_model(args.checkpoint, weights=args.weights)
    else:
        model = build_model(args.backbone, "frozen", num_frames=args.frames, weights=args.weights)
    samples, _ = load_samples(args.data, args.data_root)
    loader = _eval_loader(model, _recorded_data(model), samples, args.views, args.batch_size, args.num_workers)
    result = embed_videos(model, loader, normalize=args.normalize)
    try:
        path = save_embeddings(result, args.output, [s.path for s in samples],
                               describe(model, args.views, args.normalize, args.checkpoint), overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"adaptvid embed: {error}") from error
    n, width = result["embeddings"].shape if len(result["embeddings"]) else (0, model.embed_dim)
    print(f"{n} videos x {width} -> {path} (+ {path.with_suffix('.json').name}); {result['skipped']} skipped")
    return 0 if n else 1


# -- profile ---------------------------------------------------------------------------

def cmd_profile(args: argparse.Namespace) -> int:
    from .data import parse_views
    from .model import build_model
    from .profile import format_profile, profile_model

    views = parse_views(args.views)
    from .methods.registry import get_method, split_method_names

    # Text-classifying methods need class names; placeholders cost what real names of similar length would.
    needs_text = any(get_method(name).needs_text for name in split_method_names(args.method))
    names = [f"class {i}" for i in range(args.num_classes)] if needs_text else None
    model = build_model(args.backbone, args.method, args.num_classes, class_names=names, weights=args.weights,
                        num_frames=args.frames, **_method_options(args))
    result = profile_model(model, num_frames=args.frames, views=views, batch=args.batch)
    print(json.dumps(result) if args.json else format_profile(result))
    return 0


# -- small commands ---------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_backbones
    from .methods import list_methods

    print("backbones:")
    for name, help in list_backbones().items():
        print(f"  {name:<16} {help}")
    print("methods:")
    for name, spec in list_methods().items():
        alias = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"  {name:<16} [{spec.family}] {spec.help}{alias}")
        for f in dataclasses.fields(spec.config_cls):
            print(f"      --{f.name.replace('_', '-')} (default {f.default!r}): {f.metadata.get('help', '')}")
    return 0


def _reported(paper: dict) -> str:
    """The paper's numbers in one phrase: top-1, zero-shot accuracies, or base/novel/harmonic mean."""
    views = f" ({paper['views']} views)" if paper.get("views") else ""
    if "top1" in paper:
        return f"  paper top-1 {paper['top1']}{views}"
    if isinstance(paper.get("zero_shot"), dict):
        shown = ", ".join(f"{k} {v}" for k, v in paper["zero_shot"].items() if not str(k).endswith("*"))
        return f"  paper zero-shot {shown}{views}"
    if {"base", "novel", "hm"} <= set(paper):
        return f"  paper base/novel/HM {paper['base']}/{paper['novel']}/{paper['hm']}{views}"
    return ""


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import find_recipe, list_recipes, load_recipe

    if args.action == "list":
        names = list_recipes()
        width = max(map(len, names), default=0)
        for name in names:
            recipe = load_recipe(name)
            print(f"{name:<{width}}  {recipe['backbone']} + {recipe['method']}{_reported(recipe.get('paper', {}))}")
        return 0
    if not args.name:
        raise SystemExit("adaptvid recipes show NAME")
    print(find_recipe(args.name).read_text(), end="")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .checkpoint import CONFIG_FILE, load_model
    from .merge import merge
    from .model import count_parameters
    from .train import OutputExistsError

    output = Path(args.output)
    if (output / CONFIG_FILE).exists() and not args.overwrite:
        raise OutputExistsError(f"{output} already holds a checkpoint; pass --overwrite to replace it")
    model = load_model(args.checkpoint, weights=args.weights).eval()
    before = count_parameters(model)[1]
    merge(model)
    model.save_adapter(output, class_names=model.class_names)
    print(f"merged {', '.join(model.merged_methods)}: {before:,} -> {count_parameters(model)[1]:,} parameters; "
          f"-> {output}")
    return 0


COMMANDS = {"merge": cmd_merge, "adapt": cmd_adapt, "eval": cmd_eval, "predict": cmd_predict, "embed": cmd_embed,
            "list": cmd_list, "recipes": cmd_recipes, "split": cmd_split, "profile": cmd_profile}


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # open_clip warns on every tiny (seeded, weight-less) backbone; that is expected
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: "No pretrained weights loaded" not in record.getMessage())
    if args.command == "demo-data":
        from .data.demo import make_demo_data

        paths = make_demo_data(args.dir, seed=args.seed)
        print(json.dumps(paths, indent=2))
        return 0
    from .backbones import BackboneLoadError
    from .data import VideoReadError
    from .recipes import RecipeError
    from .train import OutputExistsError

    try:
        return COMMANDS[args.command](args)
    except (BackboneLoadError, RecipeError, OutputExistsError, VideoReadError, FileNotFoundError, ValueError) as error:
        print(f"adaptvid {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
