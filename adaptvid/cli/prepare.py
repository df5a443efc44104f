"""`adaptvid prepare DATASET ...`: the official annotation files to list files (adaptvid.data.prepare),
and `adaptvid prepare resize` (adaptvid.data.resize). The parser imports nothing heavy."""
from __future__ import annotations


def _common(p, annotations: str) -> None:
    if annotations:
        p.add_argument("--annotations", required=True, metavar="DIR", help=annotations)
    p.add_argument("--video-root", required=True, metavar="DIR", help="the folder holding the videos")
    p.add_argument("--output", required=True, metavar="DIR", help="where train.txt, val.txt, classes.txt ... go")
    p.add_argument("--absolute", action="store_true", help="write absolute video paths (default: relative to the list)")
    p.add_argument("--overwrite", action="store_true", help="replace list files already in --output")


def add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="official annotation files -> list files; re-encode videos smaller",
                       description="Convert a benchmark's official annotation files into train.txt / val.txt "
                                   "(/ test.txt), classes.txt, missing.txt (annotated videos not on disk) and "
                                   "report.txt, or re-encode a video tree (resize).")
    kinds = p.add_subparsers(dest="prepare_kind", required=True)
    k = kinds.add_parser("kinetics", aliases=["k400", "k600", "k700"], help="Kinetics-400/600/700 csv files")
    k.add_argument("--csv", nargs="+", required=True, metavar="CSV",
                   help="official csvs: train.csv validate.csv (and a labelled test.csv)")
    k.add_argument("--classes", help="class file to number the labels by (default: the csv labels, sorted)")
    _common(k, "")
    z = kinds.add_parser("k600-zeroshot", help="K600 zero-shot protocol: the novel classes, 3 splits of 160")
    z.add_argument("--k400", nargs="+", required=True, metavar="FILE", help="K400 csvs or class list")
    z.add_argument("--k600", nargs="+", required=True, metavar="FILE",
                   help="K600 csvs (their videos are listed per split) or class list")
    z.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one split per seed (default 0 1 2)")
    z.add_argument("--num-classes", type=int, default=160, help="classes per split (default 160)")
    z.add_argument("--split-file", nargs="+", dest="split_files", metavar="FILE",
                   help="published split class lists (one per split) instead of the seeded draws")
    z.add_argument("--video-root", metavar="DIR", help="with K600 csvs: the videos, to write per-split lists")
    z.add_argument("--output", required=True, metavar="DIR")
    z.add_argument("--absolute", action="store_true", help="write absolute video paths")
    z.add_argument("--overwrite", action="store_true", help="replace files already in --output")
    s = kinds.add_parser("ssv2", help="Something-Something v2 json files")
    _common(s, "folder with labels.json, train.json, validation.json")
    for name, folder in (("ucf101", "the ucfTrainTestlist folder (classInd.txt, trainlist01.txt, testlist01.txt ...)"),
                         ("hmdb51", "the testTrainMulti_7030_splits folder (<class>_test_split1.txt ...)")):
        u = kinds.add_parser(name, help=f"{name.upper()} official split files")
        _common(u, folder)
        u.add_argument("--split", default="all", choices=["1", "2", "3", "all"],
                       help="one split into --output, or all three into split1/ split2/ split3/ (default)")
    m = kinds.add_parser("msrvtt", help="MSR-VTT (retrieval): MSRVTT_data.json + split csvs -> train.jsonl, test.jsonl")
    _common(m, "folder with MSRVTT_data.json, MSRVTT_train.9k.csv (or .7k) and MSRVTT_JSFUSION_test.csv")
    m.add_argument("--train-split", choices=["9k", "7k"], default="9k", help="training videos (default 9k)")
    v = kinds.add_parser("msvd", help="MSVD (retrieval): AllVideoDescriptions.txt + split lists -> train/val/test.jsonl")
    _common(v, "folder with AllVideoDescriptions.txt, train_list.txt, val_list.txt and test_list.txt")
    r = kinds.add_parser("resize", help="re-encode a tree of videos to a smaller short side (H.264)")
    r.add_argument("src", help="source video folder (never modified)")
    r.add_argument("dst", help="output folder (same relative paths)")
    r.add_argument("--short-side", type=int, default=320, help="output short side in pixels (default 320)")
    r.add_argument("--fps", type=float, help="output frame rate (default: the source's)")
    r.add_argument("--workers", type=int, default=1, help="videos encoded in parallel (default 1)")


def _resize(args) -> int:
    try:
        from ..data.resize import resize_videos
    except ImportError as error:
        raise ValueError(f"prepare resize is not available in this installation ({error})") from None
    result = resize_videos(args.src, args.dst, short_side=args.short_side, fps=args.fps, workers=args.workers)
    print(result.summary() if hasattr(result, "summary") else result)
    failed = getattr(result, "failed", None)
    return 1 if failed else 0


def cmd_prepare(args) -> int:
    if args.prepare_kind == "resize":
        return _resize(args)
    from ..data import prepare

    kind = args.prepare_kind
    common = dict(overwrite=args.overwrite, absolute=args.absolute)
    if kind in ("kinetics", "k400", "k600", "k700"):
        report = prepare.prepare_kinetics(args.csv, args.video_root, args.output, classes=args.classes, **common)
    elif kind == "k600-zeroshot":
        report = prepare.prepare_k600_zeroshot(args.k400, args.k600, args.output, video_root=args.video_root,
                                               seeds=args.seeds, num_classes=args.num_classes,
                                               split_files=args.split_files, **common)
    elif kind == "ssv2":
        report = prepare.prepare_ssv2(args.annotations, args.video_root, args.output, **common)
    elif kind == "msrvtt":
        report = prepare.prepare_msrvtt(args.annotations, args.video_root, args.output, train_split=args.train_split,
                                        **common)
    elif kind == "msvd":
        report = prepare.prepare_msvd(args.annotations, args.video_root, args.output, **common)
    elif kind == "ucf101":
        report = prepare.prepare_ucf101(args.annotations, args.video_root, args.output, split=args.split, **common)
    else:
        report = prepare.prepare_hmdb51(args.annotations, args.video_root, args.output, split=args.split, **common)
    print(report.summary())
    return 0
