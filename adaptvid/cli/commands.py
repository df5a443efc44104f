"""The `adaptvid` commands: each calls the runner (``adaptvid.runner``) and prints what it returns."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

ADAPT_FLAGS = ("backbone", "method", "weights", "output", "frames", "head_dropout", "init_from", "train_list",
               "val_list", "data_root", "classes", "sampling", "stride", "hflip", "backend", "allow_outside_root", "task",
               "captions_format")


def _prefixed(args: argparse.Namespace, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def cmd_adapt(args: argparse.Namespace) -> int:
    from ..runner import adapt

    settings = {name: getattr(args, name) for name in ADAPT_FLAGS if getattr(args, name, None) is not None}
    result = adapt(args.recipe, overrides=args.overrides, demo=args.demo, demo_dir=args.demo_dir,
                   resume=args.resume, overwrite=args.overwrite, extend=args.extend,
                   allow_other_weights=args.allow_other_weights, cache_features=args.cache_features,
                   dry_run=args.dry_run, train=_prefixed(args, "train__"), options=_prefixed(args, "opt__"),
                   **settings)
    if args.dry_run:
        print(json.dumps(result, indent=2, default=str))
    elif result.get("t2v"):
        from ..tasks.retrieval import RetrievalTask

        print(f"validation {RetrievalTask().summary(result)} -> {result['output']}")
    elif result.get("num_videos"):
        print(f"validation top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"mean class {result['mean_class']:.2f}%  ({result['num_videos']} videos) -> {result['output']}")
    return 0


def _model(args: argparse.Namespace):
    """The model eval/predict score with: a checkpoint, optionally re-pointed at --classes, or zero-shot CLIP."""
    from ..data import read_class_names
    from ..runner.inference import as_model
    from ..text import DEFAULT_TEMPLATES, read_templates
    from ..model import zero_shot_model

    name = f"adaptvid {args.command}"
    if not args.zero_shot:
        if not args.checkpoint:
            raise SystemExit(f"{name}: pass --checkpoint DIR (or --zero-shot --backbone NAME --classes FILE)")
        return as_model(args.checkpoint, args.weights, allow_other_weights=args.allow_other_weights)
    if not args.classes:
        raise SystemExit(f"{name} --zero-shot: pass --classes FILE with the class names to score")
    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit(f"{name} --zero-shot: pass exactly one of --checkpoint DIR or --backbone NAME")
    templates = read_templates(args.templates) if args.templates else None
    if args.backbone:
        return zero_shot_model(args.backbone, read_class_names(args.classes), templates or DEFAULT_TEMPLATES,
                               num_frames=args.frames, weights=args.weights)
    return as_model(args.checkpoint, args.weights, args.classes, templates, args.allow_other_weights)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.task == "retrieval":
        if args.compile:
            raise SystemExit("adaptvid eval --compile: classification only for now; leave it out with --task retrieval")
        return _eval_retrieval(args)
    if not args.data:
        raise SystemExit("adaptvid eval: pass --data LIST (or --task retrieval --captions FILE)")
    from ..runner import evaluate

    from ..runner.inference import is_main_process

    result = evaluate(_model(args), args.data, args.views, data_root=args.data_root, batch_size=args.batch_size,
                      num_workers=args.num_workers, allow_outside_root=args.allow_outside_root, compile=args.compile)
    if not is_main_process():   # under torchrun: every process scored its shard; the first one prints
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  mean class {result['mean_class']:.2f}%  "
              f"({result['num_videos']} videos, {result['skipped']} skipped, views {args.views})")
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    from ..runner.inference import is_main_process
    from ..runner.retrieval import evaluate_retrieval, zero_shot_retrieval_model

    if not args.captions:
        raise SystemExit("adaptvid eval --task retrieval: pass --captions FILE")
    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit("adaptvid eval --task retrieval: pass exactly one of --checkpoint DIR or --backbone NAME")
    model = args.checkpoint or zero_shot_retrieval_model(args.backbone, args.frames, args.weights)
    result = evaluate_retrieval(model, args.captions, data_root=args.data_root, batch_size=args.batch_size,
                                num_workers=args.num_workers, weights=args.weights if args.checkpoint else None,
                                dsl=args.dsl, qb_norm_bank=args.qb_norm, captions_format=args.captions_format,
                                allow_other_weights=args.allow_other_weights)
    if not is_main_process():
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['num_videos']} videos, {result['num_captions']} captions, {result['skipped']} skipped")
    for name in ("", "dsl", "qb_norm"):
        part = result if not name else result.get(name)
        if part:
            label = f" ({name})" if name else ""
            for way in ("t2v", "v2t"):
                m = part[way]
                print(f"{way}{label}: R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  "
                      f"MdR {m['MdR']:g}  MnR {m['MnR']:.1f}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from ..runner.index import build_index

    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit("adaptvid index: pass exactly one of --checkpoint DIR or --backbone NAME")
    r = build_index(args.checkpoint, args.videos, args.output, backbone=args.backbone, frames=args.frames,
                    weights=args.weights, data_root=args.data_root, batch_size=args.batch_size,
                    num_workers=args.num_workers, overwrite=args.overwrite, update=args.update,
                    save_every=args.save_every, progress=args.progress, allow_other_weights=args.allow_other_weights)
    print(f"{r['num_videos']} videos -> {r['path']} (+ .json sidecar); {r['added']} embedded now, "
          f"{r['skipped']} skipped")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..runner.index import search_index

    results = search_index(args.index, args.query, k=args.top, weights=args.weights, rerank=args.rerank,
                           use_faiss=args.use_faiss)
    if args.json:
        print(json.dumps([{"query": q, "results": r} for q, r in zip(args.query, results)], indent=2))
        return 0
    for query, ranked in zip(args.query, results):
        print(query)
        for rank, item in enumerate(ranked, 1):
            print(f"  {rank}. {item['score']:.4f}  {item['video']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..runner import predict

    results = predict(_model(args), args.videos, k=args.k, views=args.views)
    for r in results:
        if "error" in r:
            print(f"adaptvid predict: {r['video']}: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in (r for r in results if "top" in r):
            print(r["video"])
            for rank, item in enumerate(r["top"], 1):
                print(f"  {rank}. {item['class']:<30} {100 * item['score']:6.2f}%")
    return 1 if all("error" in r for r in results) else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from ..runner import embed

    if bool(args.checkpoint) == bool(args.backbone):
        raise SystemExit("adaptvid embed: pass exactly one of --checkpoint DIR or --backbone NAME")
    r = embed(args.checkpoint, args.data, args.output, args.views, backbone=args.backbone, frames=args.frames,
              weights=args.weights, data_root=args.data_root, normalize=args.normalize, batch_size=args.batch_size,
              num_workers=args.num_workers, overwrite=args.overwrite, allow_other_weights=args.allow_other_weights)
    print(f"{r['num_videos']} videos x {r['embed_dim']} -> {r['path']} (+ .json sidecar); {r['skipped']} skipped")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..runner import merge_checkpoint

    r = merge_checkpoint(args.checkpoint, args.output, weights=args.weights, overwrite=args.overwrite,
                         allow_other_weights=args.allow_other_weights)
    print(f"merged {', '.join(r['merged'])}: {r['parameters_before']:,} -> {r['parameters_after']:,} parameters; "
          f"-> {r['output']}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..data import parse_views
    from ..model.profile import format_profile, profile_method

    result = profile_method(args.backbone, args.method, args.num_classes, weights=args.weights,
                            num_frames=args.frames, views=parse_views(args.views), batch=args.batch,
                            **_prefixed(args, "opt__"))
    print(json.dumps(result) if args.json else format_profile(result))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from ..data.demo import make_demo_data

    print(json.dumps(make_demo_data(args.dir, seed=args.seed), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..backbones import list_backbones
    from ..methods import list_methods

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


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..runner.recipes import find_recipe, list_recipes, load_recipe, reported_numbers

    if args.action == "list":
        names = list_recipes()
        if not names:
            raise FileNotFoundError("no recipes found: the installation lacks adaptvid/recipes/ (reinstall adaptvid) "
                                    "and ADAPTVID_RECIPES names no folder")
        width = max(map(len, names))
        for name in names:
            recipe = load_recipe(name)
            print(f"{name:<{width}}  {recipe['backbone']} + {recipe['method']}{reported_numbers(recipe.get('paper', {}))}")
        return 0
    if not args.name:
        raise SystemExit("adaptvid recipes show NAME")
    print(find_recipe(args.name).read_text(), end="")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from ..data import read_class_names
    from ..data import splits

    if args.split_kind == "few-shot":
        names = read_class_names(args.classes) if args.classes else None
        chosen = splits.few_shot(splits.read_list_entries(args.list_file), args.shots, args.seed, args.allow_fewer, names)
        splits.write_list(chosen, args.output, source=args.list_file)
        print(f"{len(chosen)} videos ({args.shots} per class, seed {args.seed}) -> {args.output}")
        return 0
    written = splits.base_novel_split(args.classes, args.output_dir, args.list_files, args.order, args.seed,
                                      args.shots, args.allow_fewer)
    print(json.dumps(written, indent=2))
    return 0
