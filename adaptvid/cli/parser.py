"""The `adaptvid` command's arguments: one sub-parser per command; adapt's training flags come from
TrainConfig's fields and its method options from the registered methods' config fields."""
from __future__ import annotations

import argparse
import dataclasses

from .import_command import add_import_parser
from .prepare import add_prepare_parser

DEFAULT_DEMO_DIR = "adaptvid_demo/data"   # = adaptvid.runner.data.DEFAULT_DEMO_DIR (this module imports no torch)


def _bool(text: str) -> bool:
    return str(text).lower() in ("1", "true", "yes", "on")


def _field_type(default):
    from ..runner.recipes import parse_value

    if isinstance(default, bool):
        return _bool
    return type(default) if isinstance(default, (int, float, str)) else parse_value


def _add_train_options(p) -> None:
    """One flag per TrainConfig field, its help from the field's metadata (dest train__<field>)."""
    from ..train import TrainConfig

    group = p.add_argument_group("training (TrainConfig; recipe section train:)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "progress":
            group.add_argument("--no-progress", dest="train__progress", action="store_false", default=None,
                               help="no progress bar")
            continue
        # a bool field works as a bare switch (--grad-checkpoint) and with a value (--shuffle false)
        switch = {"nargs": "?", "const": True} if isinstance(f.default, bool) else {}
        group.add_argument("--" + f.name.replace("_", "-"), dest="train__" + f.name, type=_field_type(f.default),
                           metavar=f.name.upper(), help=f"{f.metadata.get('help', '')} (default {f.default!r})",
                           **switch)


def _add_method_options(p) -> None:
    """One flag per method option name, in the group of the first method that has it; an option shared by
    several methods lists each one's meaning (it goes to every chosen method with that field)."""
    from ..methods import list_methods

    meanings: dict[str, list[str]] = {}
    first: dict[str, tuple[str, dataclasses.Field]] = {}
    for spec in list_methods().values():
        for f in dataclasses.fields(spec.config_cls):
            meanings.setdefault(f.name, []).append(f"{spec.name}: {f.metadata.get('help', '')} (default {f.default!r})")
            first.setdefault(f.name, (spec.name, f))
    for spec in list_methods().values():
        own = [f for f in dataclasses.fields(spec.config_cls) if first[f.name][0] == spec.name]
        shared = [f.name for f in dataclasses.fields(spec.config_cls) if first[f.name][0] != spec.name]
        note = f" (also takes {', '.join('--' + n.replace('_', '-') for n in shared)})" if shared else ""
        group = p.add_argument_group(f"{spec.name} options", f"[{spec.family}] {spec.help}{note}")
        for f in own:
            group.add_argument("--" + f.name.replace("_", "-"), dest="opt__" + f.name, metavar=f.name.upper(),
                               type=_field_type(f.default), help="; ".join(meanings[f.name]))


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="train a video model from an image backbone",
                       description="Train a video model. Settings come from (lowest first): the recipe, "
                                   "these flags, then --set KEY=VALUE (same names as the recipe files).")
    p.add_argument("--recipe", help="a recipe name (adaptvid recipes list) or a .yaml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting by dotted path, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--demo", action="store_true", help="train on the generated demo task (made if missing)")
    p.add_argument("--demo-dir", default=DEFAULT_DEMO_DIR, help=f"where the demo data lives (default {DEFAULT_DEMO_DIR})")
    p.add_argument("--dry-run", action="store_true", help="resolve and validate the settings, print them, train nothing")
    p.add_argument("--backbone", help="backbone name (adaptvid list), default clip")
    p.add_argument("--method", help="method name(s), comma-separated, e.g. st-adapter")
    p.add_argument("--weights", help="backbone weights: a local file/folder, or 'random' (default: the hub's)")
    p.add_argument("--train", dest="train_list", metavar="LIST",
                   help="training list file ('relative/path label' per line) or a folder of <class>/<video> folders")
    p.add_argument("--val", dest="val_list", metavar="LIST", help="validation list file or class-folder tree")
    p.add_argument("--data-root", help="folder the list paths are relative to (default: the list's folder)")
    p.add_argument("--classes", help="class-names file, one per line in label order")
    p.add_argument("--allow-outside-root", action="store_true", default=None,
                   help="accept list paths that climb out of --data-root (../)")
    p.add_argument("--frames", type=int, help="frames per clip (default 8)")
    p.add_argument("--sampling", choices=["segment", "dense"], help="segment (TSN) or dense fixed-stride sampling")
    p.add_argument("--stride", type=int, help="frame stride for dense sampling")
    p.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips in training")
    p.add_argument("--backend", choices=["decord", "pyav", "torchcodec"], help="video reader (default decord)")
    p.add_argument("--head-dropout", type=float, help="dropout before the linear head")
    p.add_argument("--output", help="checkpoint folder (default runs/<recipe or method>)")
    p.add_argument("--task", choices=["classification", "retrieval"],
                   help="classification (list files, default) or retrieval (captions files: video-text contrastive)")
    p.add_argument("--captions-format", help="retrieval: the format of --train/--val when the extension does not "
                                             "say it: didemo, activitynet, lsmdc, webvid, jsonl or csv")
    p.add_argument("--resume", action="store_true", help="continue the training in --output exactly where it stopped")
    p.add_argument("--extend", action="store_true", help="with --resume: train to a new --epochs, the cosine schedule "
                                                         "stretched from the current step")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="resume onto other frozen backbone weights than the checkpoint's (a warning, not an error)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --output")
    p.add_argument("--cache-features", metavar="DIR",
                   help="frozen-backbone methods only: run the backbone once, store its outputs in DIR, "
                        "train every epoch from them (the first pass's augmentation is reused)")
    p.add_argument("--init-from", metavar="CHECKPOINT_DIR",
                   help="load the image- and text-tower tensors of a checkpoint that fine-tuned them (e.g. vifi-clip's) "
                        "into this model's towers before training (ViFi-CLIP's bridge and prompt)")
    _add_train_options(p)
    _add_method_options(p)


def _add_model_source(p, zero_shot: bool = True) -> None:
    p.add_argument("--checkpoint", help="folder written by adaptvid adapt / save_pretrained (or a Hub repo id)")
    p.add_argument("--weights", help="backbone weights to rebuild on (default: those recorded)")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="load the checkpoint onto frozen weights other than those it was trained on (warns)")
    if zero_shot:
        p.add_argument("--backbone", help="with --zero-shot and no --checkpoint: a CLIP backbone name (adaptvid list)")
        p.add_argument("--zero-shot", action="store_true", help="classify by text against the names in --classes")
        p.add_argument("--classes", help="class names file (one per line)")
        p.add_argument("--templates", help="prompt templates file, one per line with {} for the class name "
                                           "(default: the classifier's own, or adaptvid's default ensemble)")
        p.add_argument("--frames", type=int, default=8, help="frames per clip for --backbone (default 8)")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS, e.g. 4x3 (default 1x1)")


def _add_inference(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (or, zero-shot, a CLIP backbone) on a list file",
                       description="Evaluate a trained checkpoint on its classes; with --zero-shot, score the videos "
                                   "against the class names of --classes instead.")
    _add_model_source(p)
    p.add_argument("--task", choices=["classification", "retrieval"], default="classification",
                   help="classification (--data LIST) or text-video retrieval (--captions FILE)")
    p.add_argument("--data", help="list file ('relative/path label' per line) or class-folder tree")
    p.add_argument("--captions", help="retrieval: a captions file (.jsonl / .csv, or --captions-format)")
    p.add_argument("--captions-format", help="retrieval: didemo, activitynet, lsmdc, webvid, jsonl or csv")
    p.add_argument("--dsl", action="store_true", help="retrieval: also report dual-softmax re-normalised numbers")
    p.add_argument("--qb-norm", metavar="BANK", help="retrieval: also report QB-Norm with this captions file as bank")
    p.add_argument("--data-root", help="folder the list paths are relative to")
    p.add_argument("--allow-outside-root", action="store_true", help="accept list paths that climb out of --data-root")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object (percentages to 2 decimals)")
    p.add_argument("--compile", action="store_true",
                   help="classification: score with torch.compile(model) (backend from ADAPTVID_COMPILE_BACKEND, "
                        "default inductor; the first batches pay the compile time)")
    p = sub.add_parser("predict", help="top-k classes for each video (of a checkpoint, or zero-shot)")
    _add_model_source(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("-k", type=int, default=5, help="classes to show per video (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("embed", help="video embeddings of a list of videos, for other tasks",
                       description="Write OUTPUT.safetensors (embeddings, labels, indices) and OUTPUT.json (the "
                                   "video paths in row order) from a checkpoint or a plain backbone's frame mean.")
    _add_model_source(p, zero_shot=False)
    p.add_argument("--backbone", help="instead of --checkpoint: a backbone name (its frozen frame embeddings, averaged)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip for --backbone (default 8)")
    p.add_argument("--data", required=True, help="list file or class-folder tree")
    p.add_argument("--data-root", help="folder the list paths are relative to")
    p.add_argument("--output", required=True, help="embeddings file, ending in .safetensors")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p = sub.add_parser("index", help="embed videos into a searchable index (text-video retrieval)")
    p.add_argument("videos", metavar="VIDEOS_OR_LIST", help="a folder of videos, a class-folder tree or a list file")
    p.add_argument("--checkpoint", help="a trained retrieval checkpoint (or any CLIP-space checkpoint)")
    p.add_argument("--backbone", help="instead: a CLIP backbone (frozen, meanP over frames)")
    p.add_argument("--frames", type=int, default=12, help="frames per video for --backbone (default 12)")
    p.add_argument("--weights", help="backbone weights (default: the hub's, or those the checkpoint recorded)")
    p.add_argument("--data-root", help="folder a list file's paths are relative to")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="load the checkpoint onto frozen weights other than those it was trained on (warns)")
    p.add_argument("--output", required=True, help="index file, ending in .safetensors (+ a .json sidecar)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="rebuild an existing index from scratch")
    existing.add_argument("--update", action="store_true",
                          help="add to an existing index the videos it does not hold yet (same model only)")
    p.add_argument("--save-every", type=int, default=256, metavar="N",
                   help="save a part every N videos, so that an interrupted build resumes there (default 256)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p = sub.add_parser("search", help="rank an index's videos for a text query")
    p.add_argument("index", help="an index written by adaptvid index")
    p.add_argument("query", nargs="+", help="the text(s) to search for")
    p.add_argument("--top", type=int, default=10, help="videos to show per query (default 10)")
    p.add_argument("--rerank", type=int, default=100, metavar="N",
                   help="text-conditioned heads (X-Pool, tightTransf): rescore the N best cosine candidates per "
                        "query with the head (default 100; the head costs one evaluation per candidate)")
    p.add_argument("--faiss", dest="use_faiss", action="store_true", default=None,
                   help="rank with FAISS (pip install 'adaptvid[faiss]'); by default it is used when installed "
                        "and the index holds 100,000 videos or more")
    p.add_argument("--weights", help="backbone weights to rebuild the model on (default: those recorded)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("merge", help="fold mergeable methods (ZeroI2V, LoRA) into the backbone weights")
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint folder")
    p.add_argument("--output", required=True, help="folder for the merged checkpoint (whole tower included)")
    p.add_argument("--weights", help="backbone weights to rebuild on (default: those recorded)")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="load the checkpoint onto frozen weights other than those it was trained on (warns)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    p = sub.add_parser("profile", help="parameters, FLOPs and activation memory of a method on a backbone")
    p.add_argument("--backbone", default="clip", help="backbone name (adaptvid list), default clip")
    p.add_argument("--method", required=True, help="method name(s), comma-separated, e.g. st-adapter")
    p.add_argument("--weights", help="local weights, or 'random' to profile without downloading anything")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--views", default="1x1", help="test views CLIPSxCROPS; total FLOPs = per view x clips x crops")
    p.add_argument("--batch", type=int, default=1, help="clips in the training step whose activations are measured")
    p.add_argument("--num-classes", type=int, default=400, help="classes of the linear head (default 400)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_method_options(p)


def _add_small(sub) -> None:
    p = sub.add_parser("demo-data", help="generate the demo videos, lists and class names")
    p.add_argument("dir", nargs="?", default=DEFAULT_DEMO_DIR)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="backbones and methods")
    p = sub.add_parser("recipes", help="list or show recipes")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?")
    p = sub.add_parser("split", help="evaluation-protocol splits: few-shot lists, base/novel class halves")
    kinds = p.add_subparsers(dest="split_kind", required=True)
    f = kinds.add_parser("few-shot", help="exactly K videos per class, chosen by a seed")
    f.add_argument("--list", required=True, dest="list_file", help="the full training list ('path label' per line)")
    f.add_argument("--shots", type=int, required=True, help="videos per class (the protocol: 2, 4, 8, 16)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--output", required=True, help="the list file to write (paths rewritten to resolve from it)")
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


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="adaptvid", description="Turn frozen image models into video models.")
    parser.add_argument("--version", action="version", version=f"adaptvid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_adapt(sub)
    _add_inference(sub)
    _add_small(sub)
    add_prepare_parser(sub)
    add_import_parser(sub)
    return parser
