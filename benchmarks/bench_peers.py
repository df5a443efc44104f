"""adaptvid side by side with what a user would otherwise run, in one process, interleaved.

Three comparisons, each a ratio of adaptvid's time to the reference's on the same weights and inputs:

(a) X-CLIP inference: ``adaptvid.load_xclip`` vs ``transformers.XCLIPModel``, both loaded from one
    checkpoint written by ``save_pretrained`` (a random ViT-B/32-sized X-CLIP: vision 768 wide,
    12 layers, text 512 wide, 12 layers), a fixed list of class texts. The logits are compared
    before anything is timed. transformers encodes the class texts on every call (``XCLIPModel``
    takes ``input_ids``); adaptvid encodes them once and reuses them while the text side is
    unchanged. The same comparison with a single class text (video side alone) is printed too.
(b) frozen encode of one clip (adaptvid ``frozen`` readout, ``encode_video``) vs the library's own
    image forward on the same frames (``backbone.library_forward``: open_clip ``visual(x)``,
    transformers ``vision_model(...).pooler_output`` + projection, timm ``forward_head(forward_features)``),
    ViT-B/16 with random weights.
(c) EVL and AIM inference vs the bare tower (the same model with its method modules taken out,
    ``adaptvid.model.profile.bare_backbone``), CLIP ViT-B/16 with random weights.

Each pair is timed back to back, in alternating order, ``--repeats`` times after one untimed
warm-up call each; the table gives the median of the per-pair ratios, their spread (min-max), the
median times and PASS/FAIL against the targets.

    python benchmarks/bench_peers.py            # ~4 min on a 2-core CPU
    python benchmarks/bench_peers.py --quick    # smaller sizes, < 1 min
    python benchmarks/bench_peers.py --only xclip --device cuda   # on a GPU (fp32; clocks read after a sync)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random or local weights only: never wait on a hub

import torch  # noqa: E402

VERBS = ("playing", "riding", "throwing", "cutting", "washing", "climbing", "folding", "juggling", "painting", "kicking",
         "catching", "pushing", "lifting", "stirring", "brushing")
NOUNS = ("guitar", "horse", "ball", "bread", "dishes", "rope", "paper", "fire", "fence", "car", "dog", "hair", "soup",
         "teeth", "wood", "drums", "kite", "snow")


@dataclass
class Row:
    name: str
    ours: list
    theirs: list
    target: float = None
    note: str = ""

    @property
    def ratios(self) -> list:
        return [a / b for a, b in zip(self.ours, self.theirs)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (4 blocks per tower, 4 frames), 3 repeats")
    p.add_argument("--repeats", type=int, help="timed pairs per comparison (default 5, 3 with --quick)")
    p.add_argument("--classes", type=int, default=101, help="class texts for X-CLIP (default 101, as UCF-101)")
    p.add_argument("--only", default="xclip,encode,methods", help="comma-separated subset of xclip,encode,methods")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu); both models and inputs go there")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available; use --device cpu")
    return args


def class_names(count: int) -> list[str]:
    """Distinct two-word action names ('playing guitar', ...), deterministic."""
    if count > len(VERBS) * len(NOUNS):
        raise SystemExit(f"--classes {count}: at most {len(VERBS) * len(NOUNS)} distinct names are made")
    return [f"{VERBS[i % len(VERBS)]} {NOUNS[(i // len(VERBS) + i) % len(NOUNS)]}" for i in range(count)]


def _sync() -> None:
    """Wait for queued GPU work, so that the clock reads what the call cost (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(ours, theirs, repeats: int) -> tuple[list, list]:
    """Times of ``ours()`` and ``theirs()`` called back to back, alternating which goes first."""
    with torch.no_grad():
        ours(), theirs()   # warm-up: allocator, kernel choice, adaptvid's class-text cache
        a, b = [], []
        for i in range(repeats):
            for fn, out in ((ours, a), (theirs, b)) if i % 2 == 0 else ((theirs, b), (ours, a)):
                _sync()
                start = time.perf_counter()
                fn()
                _sync()
                out.append(time.perf_counter() - start)
    return a, b


# -- (a) X-CLIP --------------------------------------------------------------------------------------

def xclip_config(quick: bool, frames: int):
    from transformers import XCLIPConfig

    layers = 4 if quick else 12
    return XCLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=layers, num_attention_heads=8),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=layers, num_attention_heads=12, num_frames=frames, mit_hidden_size=512,
                           mit_intermediate_size=2048, mit_num_hidden_layers=1, mit_num_attention_heads=8),
        projection_dim=512, prompt_layers=2, prompt_num_attention_heads=8,
    )


def bench_xclip(args, frames: int, repeats: int) -> tuple[list, str]:
    from transformers import XCLIPModel

    import adaptvid
    from adaptvid.text import ClipBpeTokenizer

    torch.manual_seed(0)
    config = xclip_config(args.quick, frames)
    reference = XCLIPModel(config).eval()
    with torch.no_grad():   # off their init: biases, norms and alpha all matter in the comparison
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        theirs_model = XCLIPModel.from_pretrained(folder).eval().to(args.device)
        video = torch.randn(1, frames, 3, 224, 224).to(args.device)   # transformers' layout (B, T, C, H, W)
        ours_video = video.transpose(1, 2).contiguous()        # adaptvid's (B, C, T, H, W)
        for count in (args.classes, 1):
            names = class_names(count)
            ours_model = adaptvid.load_xclip(folder, class_names=names).eval().to(args.device)
            ids, mask = ClipBpeTokenizer()(names)
            ids, mask = ids[:, :int(mask.sum(1).max())], mask[:, :int(mask.sum(1).max())]   # padded to the longest
            ids, mask = ids.to(args.device), mask.to(args.device)
            with torch.no_grad():
                ours_logits = ours_model(ours_video)
                theirs_logits = theirs_model(input_ids=ids, attention_mask=mask, pixel_values=video).logits_per_video
            diff = (ours_logits - theirs_logits).abs().max().item()
            if not diff <= 1e-3:
                raise SystemExit(f"x-clip: adaptvid's logits differ from transformers' by {diff:.3g}: not timing")
            a, b = interleaved(lambda: ours_model(ours_video),
                               lambda: theirs_model(input_ids=ids, attention_mask=mask, pixel_values=video), repeats)
            what = f"{count} class texts" if count > 1 else "1 class text: the video side alone"
            rows.append(Row(f"x-clip inference / transformers XCLIPModel ({what})", a, b,
                            target=0.8 if count > 1 else None, note=f"logits max abs diff {diff:.1e}"))
    layers = config.vision_config.num_hidden_layers
    return rows, (f"X-CLIP: random ViT-B/32-sized weights (vision 768 wide, text 512 wide, {layers} layers each), "
                  f"1 clip x {frames} frames x 224 px, saved with save_pretrained and loaded by both")


# -- (b) frozen encode vs the library's own image forward -------------------------------------------

def _hf_clip_folder(folder: str, quick: bool) -> str:
    from transformers import CLIPConfig, CLIPModel

    layers = 4 if quick else 12
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=layers, num_attention_heads=12),
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


def bench_encode(args, frames: int, repeats: int) -> tuple[list, str]:
    from adaptvid import build_model

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        backbones = (("open_clip", "clip", "random"), ("transformers", f"hf:{_hf_clip_folder(folder, args.quick)}", None),
                     ("timm", "timm:vit_base_patch16_224", "random"))
        for library, name, weights in backbones:
            torch.manual_seed(0)
            model = build_model(name, "frozen", num_classes=None, weights=weights, num_frames=frames).eval()
            if args.quick and library != "transformers":
                _keep_blocks(model, 4)
            model.to(args.device)
            backbone = model.backbone
            size = backbone.preprocess.image_size
            clip = torch.randn(1, 3, frames, size, size, device=args.device)
            images = clip.transpose(1, 2).reshape(frames, 3, size, size).contiguous()
            with torch.no_grad():
                diff = (model.encode_video(clip) - backbone.library_forward(images).mean(0, keepdim=True)).abs().max().item()
            a, b = interleaved(lambda: model.encode_video(clip), lambda: backbone.library_forward(images), repeats)
            rows.append(Row(f"frozen encode / {library} image forward", a, b, target=1.02,
                            note=f"embedding max abs diff {diff:.1e}"))
    return rows, f"frozen encode: ViT-B/16, random weights, 1 clip x {frames} frames x 224 px"


def _keep_blocks(model, depth: int) -> None:
    """--quick: the tower cut to its first ``depth`` blocks (open_clip / timm), the method's slots with them."""
    tower, backbone = model.backbone.tower, model.backbone
    blocks = tower.transformer.resblocks if hasattr(tower, "transformer") else tower.blocks
    del blocks[depth:]
    del backbone.slots[depth:]
    backbone.refresh_views()


# -- (c) EVL and AIM vs the bare tower ----------------------------------------------------------------

def bench_methods(args, frames: int, repeats: int) -> tuple[list, str]:
    from adaptvid import build_model
    from adaptvid.model.profile import bare_backbone

    rows = []
    for method, target in (("evl", 1.25), ("aim", 1.50)):
        torch.manual_seed(0)
        model = build_model("clip", method, 400, weights="random", num_frames=frames,
                            **({"num_layers": 2} if args.quick and method == "evl" else {}))
        if args.quick:
            _keep_blocks(model, 4)
            if method == "evl":   # its decoder reads the last blocks: point it at the cut tower's
                model.decoder.layers = model.decoder.qk_layers = [2, 3]
        model.eval().to(args.device)
        clip = torch.randn(1, 3, frames, 224, 224, device=args.device)

        def bare():
            with bare_backbone(model):
                model.encode_video(clip)

        a, b = interleaved(lambda: model(clip), bare, repeats)
        rows.append(Row(f"{method} inference / bare tower", a, b, target=target))
    return rows, f"EVL, AIM: CLIP ViT-B/16 (open_clip), random weights, 1 clip x {frames} frames x 224 px"


def print_table(rows: list, notes: list, repeats: int) -> bool:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and torch.cuda.is_initialized() else \
        f"{torch.get_num_threads()} CPU threads"
    print(f"# adaptvid vs peers: {device}, torch {torch.__version__}, "
          f"{repeats} interleaved pairs each (median of the pair ratios, spread min-max)")
    for note in notes:
        print(f"# {note}")
    print("| comparison | adaptvid ms | peer ms | ratio (median) | spread | target | result | check |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for row in rows:
        ratio = statistics.median(row.ratios)
        if row.target is None:
            target, result = "-", "info"
        else:
            target, result = f"<= {row.target:.2f}", "PASS" if ratio <= row.target else "FAIL"
            ok &= result == "PASS"
        print(f"| {row.name} | {1000 * statistics.median(row.ours):.0f} | {1000 * statistics.median(row.theirs):.0f} | "
              f"{ratio:.3f} | {min(row.ratios):.3f}-{max(row.ratios):.3f} | {target} | {result} | {row.note} |")
    return ok


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    frames = 4 if args.quick else 8
    parts = {"xclip": bench_xclip, "encode": bench_encode, "methods": bench_methods}
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(parts))
    if unknown or not chosen:
        raise SystemExit(f"--only: unknown part(s) {unknown}; choose from {sorted(parts)}")
    import transformers

    transformers.utils.logging.disable_progress_bar()   # loading bars would interleave with the table
    rows, notes = [], []
    for part in chosen:
        got, note = parts[part](args, frames, repeats)
        rows += got
        notes.append(note)
    ok = print_table(rows, notes, repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
