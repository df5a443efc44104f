"""``adaptvid import``: a method's released checkpoint as an adaptvid checkpoint folder."""
from __future__ import annotations

import argparse

import yaml


def add_import_parser(sub) -> None:
    p = sub.add_parser("import", help="convert a method's released checkpoint into an adaptvid checkpoint folder",
                       description="Read an official checkpoint safely (tensors only), map it strictly onto "
                                   "adaptvid's modules and write an adaptvid checkpoint folder.")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT_FILE", help="the released .pth/.pt/.pyth/.safetensors")
    p.add_argument("--format", dest="fmt", metavar="NAME", help="the method whose official code saved it (--list)")
    p.add_argument("--list", action="store_true", help="show the formats and the released checkpoints they read")
    p.add_argument("--output", help="the checkpoint folder to write")
    p.add_argument("--backbone", help="method-only checkpoints: the backbone they were trained on, e.g. clip")
    p.add_argument("--weights", help="with --backbone: its weights (a local file, default the hub's)")
    p.add_argument("--num-frames", type=int, help="frames per clip (default: the checkpoint's, or the format's)")
    p.add_argument("--classes", help="class-names file (methods that classify by text need it)")
    p.add_argument("--heads", type=int, help="attention heads of the image tower (default width // 64)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a format option the tensors cannot show, e.g. --option scale=1.0 for an AIM checkpoint "
                        "(repeatable; values read as YAML: numbers, true/false, strings)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")


def cmd_import(args: argparse.Namespace) -> int:
    from ..checkpoints.importers import import_checkpoint, list_formats

    if args.list:
        for name, fmt in sorted(list_formats().items()):
            print(f"{name:18} {fmt.help}\n{'':18} source: {fmt.source}\n{'':18} releases: {', '.join(fmt.releases)}")
        return 0
    missing = [flag for flag, value in (("CHECKPOINT_FILE", args.checkpoint), ("--format", args.fmt),
                                        ("--output", args.output)) if not value]
    if missing:
        raise SystemExit(f"adaptvid import: pass {', '.join(missing)} (or --list)")
    class_names = None
    if args.classes:
        from ..data import read_class_names

        class_names = read_class_names(args.classes)
    options = {"heads": args.heads} if args.heads else {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"adaptvid import: --option {item!r}: write KEY=VALUE, e.g. --option scale=1.0")
        options[key.strip()] = yaml.safe_load(value)
    model = import_checkpoint(args.fmt, args.checkpoint, backbone=args.backbone, weights=args.weights,
                              num_frames=args.num_frames, class_names=class_names, output=args.output,
                              overwrite=args.overwrite, **options)
    methods = ",".join(name for name, _ in model.methods)
    print(f"imported {args.checkpoint} ({args.fmt}) as {methods} on {model.backbone.name} -> {args.output}")
    return 0
