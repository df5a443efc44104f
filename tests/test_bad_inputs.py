"""Bad input, one case at a time: what a user can get wrong (videos, list files, settings, checkpoints,
recipes) must end in a clear one-line error that names the file (and line) and the fix, or in a
counted, logged skip. Never a traceback, never a silent wrong answer; a command that did no useful
work exits non-zero; nothing the user had is overwritten.

One parametrised test over ``CASES``; the README quotes ``len(CASES)`` ("N bad-input cases tried").
Each case builds its bad input under its own ``tmp_path`` and runs the CLI (``adaptvid.cli.main``).
The test then checks, for every case: the exit status (2 input or settings error, 1 no useful work,
0 a counted skip or an input that is odd but valid), the words stderr must hold, no ``Traceback``
in the output, the files that were there before byte-identical after, no checkpoint left by a
failed ``adapt`` (no output folder at all for an ``adapt`` refused with status 2), and no marker
file written by an injected payload.
"""
from __future__ import annotations

import fractions
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptvid.cli import main
from adaptvid.data import open_video
from adaptvid.data.demo import demo_class_names, make_clip, write_video

# The training flags of every adapt below: tiny and quick (one epoch, one process, no progress bar).
FAST = ["--epochs", "1", "--bottleneck", "8", "--frames", "4", "--batch-size", "4", "--num-workers", "0",
        "--no-progress"]
MODEL = ["--backbone", "tiny-clip", "--method", "st-adapter"]
CHECKPOINT_FILES = ("adaptvid.json", "adapter.safetensors")
SKIP = "skipping unreadable video"   # the warning of a skipped video (it names the file)


# -- shared data: the demo videos and one trained checkpoint ---------------------------------------

@pytest.fixture(scope="module")
def checkpoint(demo, tmp_path_factory):
    """One tiny-clip st-adapter run of one epoch; cases that change a checkpoint change a copy."""
    out = tmp_path_factory.mktemp("runs") / "st-adapter"
    code = main(["adapt", *MODEL, "--train", str(demo / "train.txt"), "--classes", str(demo / "classes.txt"),
                 "--output", str(out), *FAST])
    assert code == 0 and all((out / name).is_file() for name in CHECKPOINT_FILES)
    return out


def tree_hash(path: Path) -> dict:
    """{relative path: sha256} of every file under ``path`` (or of ``path`` itself)."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shared_hashes(demo, checkpoint):
    return {demo: tree_hash(demo), checkpoint: tree_hash(checkpoint)}


class Env:
    """What a case builds its input from, in its own folder ``tmp``; ``out`` is where adapt writes."""

    def __init__(self, tmp: Path, demo: Path, checkpoint: Path):
        self.tmp, self.demo, self.shared_checkpoint = tmp, demo, checkpoint
        self.out = tmp / "run"
        self.marker = tmp / "MARKER"     # an injected payload would create it
        self.protected: list[Path] = []  # hashed before the run, compared after

    def video(self, k: int = 0, label: int = 0, split: str = "train") -> Path:
        """The k-th demo video of class ``label`` in ``split``."""
        return self.demo / split / demo_class_names()[label].replace(" ", "_") / f"{k:03d}.mp4"

    def good_lines(self) -> list[str]:
        return [f"{self.video(0, 0)} 0", f"{self.video(0, 1)} 1"]

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def train_list(self, *bad_lines: str) -> Path:
        """Two readable demo videos (absolute paths), then ``bad_lines``."""
        return self.write("train.txt", "\n".join([*self.good_lines(), *bad_lines]) + "\n")

    def classes(self) -> str:
        return str(self.demo / "classes.txt")

    def adapt(self, train: Path, *extra: str) -> list[str]:
        return ["adapt", *MODEL, "--train", str(train), "--classes", self.classes(), "--output", str(self.out),
                *FAST, *extra]

    def resume(self, *extra: str) -> list[str]:
        """Resume the trained checkpoint's run in a copy, with its own data and flags (only ``extra`` differs)."""
        self.out = self.checkpoint()
        return ["adapt", *MODEL, "--train", str(self.demo / "train.txt"), "--classes", self.classes(),
                "--output", str(self.out), *FAST, "--resume", *extra]

    def checkpoint(self) -> Path:
        """A private copy of the trained checkpoint, protected (compared byte for byte after the run)."""
        copy = self.tmp / "checkpoint"
        shutil.copytree(self.shared_checkpoint, copy)
        self.protected.append(copy)
        return copy

    def eval(self, data: Path, checkpoint: Optional[Path] = None, *extra: str) -> list[str]:
        return ["eval", "--checkpoint", str(checkpoint or self.shared_checkpoint), "--data", str(data),
                "--num-workers", "0", *extra]


@dataclass(frozen=True)
class Case:
    make: Callable[[Env], list]          # writes the bad input under env.tmp; returns main()'s argv
    code: int                            # 2 input/settings error, 1 no useful work, 0 skipped/accepted
    says: tuple = ()                     # in stderr; "{tmp}" is the case's folder; "re:" starts a regex
    check: Optional[Callable] = None     # check(env, out, err): what else must hold


def run(argv: list, capsys) -> tuple:
    """(exit status, stdout, stderr) of ``adaptvid ARGV`` as a shell would see them."""
    capsys.readouterr()
    extra = ""
    try:
        code = main(argv)
    except SystemExit as exit_:   # argparse, or a command's SystemExit("message") (status 1, message on stderr)
        code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else 1
        extra = "" if isinstance(exit_.code, int) or exit_.code is None else f"{exit_.code}\n"
    except Exception as error:    # escaped main: a shell would show a traceback
        code = f"raised {type(error).__name__}"
        extra = f"Traceback (most recent call last):\n  ...\n{type(error).__name__}: {error}\n"
    out, err = capsys.readouterr()
    return code, out, err + extra


def done_event(env: Env) -> dict:
    events = [json.loads(line) for line in (env.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return next(e for e in reversed(events) if e["event"] == "done")


# -- what must hold beyond exit status and stderr ----------------------------------------------------

def skipped(name: str) -> Callable:
    """The bad video was skipped with one warning naming it, counted once, and the run saved a checkpoint."""
    def check(env, out, err):
        warnings = [line for line in err.splitlines() if SKIP in line]
        assert len(warnings) == 1 and name in warnings[0], err
        assert done_event(env)["train_skipped"] == 1
        assert "skipped 1 unreadable training video" in out
        assert all((env.out / f).is_file() for f in CHECKPOINT_FILES)
    return check


def trained_without_skips(env, out, err):
    assert SKIP not in err, err
    assert done_event(env)["train_skipped"] == 0 and done_event(env)["step"] >= 1
    assert all((env.out / f).is_file() for f in CHECKPOINT_FILES)


def read_as_written(name: str, exact: bool) -> Callable:
    """An odd but valid video is used (not skipped), and its frames come back as written: RGB, every frame,
    in order. ``exact``: equal to the written frames (lossless files); otherwise (H.264 4:2:0 is lossy in
    RGB) equal to FFmpeg's own decoding of the file, and each frame nearest to the one written there."""
    def check(env, out, err):
        import av

        trained_without_skips(env, out, err)
        written = np.load(env.tmp / (name + ".npy"))
        reader = open_video(env.tmp / name)
        frames = reader.get_frames(range(len(reader)))
        assert frames.shape == written.shape and frames.dtype == np.uint8
        if exact:
            assert np.array_equal(frames, written)
            return
        with av.open(str(env.tmp / name)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
        assert np.array_equal(frames, decoded)
        for i, frame in enumerate(frames.astype(np.float32)):
            distance = np.abs(written.astype(np.float32) - frame).mean(axis=(1, 2, 3))
            assert distance[i] <= distance.min() + 1e-6, (i, distance)
    return check


def error_line_says(*words: str) -> Callable:
    """adaptvid's own error line holds the whole message: the file and the fix on that one line, no
    terminal escape codes, nothing of it pushed onto later lines by an embedded library message."""
    def check(env, out, err):
        lines = [line for line in err.splitlines() if line.startswith("adaptvid ")]
        assert lines and all(word in lines[-1] for word in words), err
        assert "\x1b[" not in err, repr(err)
    return check


def nothing_at(*names: str) -> Callable:
    def check(env, out, err):
        for name in names:
            assert not (env.tmp / name).exists(), name
    return check


# -- writing odd videos ---------------------------------------------------------------------------------

def encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, in_format: str, pts=None, options=None):
    """``frames`` (T, H, W, C) encoded with PyAV; ``pts`` in milliseconds for a variable frame rate."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.thread_count = 1
        if options:
            stream.options = options
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format=in_format)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def one_bad_video(name: str, write: Callable[[Path], None]) -> Callable[[Env], list]:
    def make(env):
        write(env.tmp / name)
        return env.adapt(env.train_list(f"{name} 2"))
    return make


def _clip(size: int = 64) -> np.ndarray:
    return make_clip(0, np.random.default_rng(7), num_frames=16, size=size)   # a square growing: frames differ


def _truncated(path: Path, demo_video: Path) -> None:
    data = demo_video.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])


def _tiny(path: Path) -> None:
    clip = _clip(16)
    write_video(path, clip)
    np.save(str(path) + ".npy", clip)


def _grayscale(path: Path) -> None:
    # PNG in QuickTime keeps pix_fmt gray (this libx264 build re-encodes gray as yuv420p).
    gray = _clip().mean(axis=-1).astype(np.uint8)
    encode(path, gray, "png", "gray", "gray")
    import av

    with av.open(str(path)) as container:
        if container.streams.video[0].codec_context.pix_fmt != "gray":
            pytest.skip("PyAV could not write a pix_fmt=gray video here")
    np.save(str(path) + ".npy", np.repeat(gray[..., None], 3, axis=-1))


def _alpha(path: Path) -> None:
    clip = _clip()
    rgba = np.concatenate([clip, np.full(clip.shape[:3] + (1,), 100, np.uint8)], axis=-1)
    try:
        encode(path, rgba, "png", "rgba", "rgba")
    except Exception as error:   # pragma: no cover - an FFmpeg build without the PNG encoder
        pytest.skip(f"PyAV cannot write an rgba video here ({error})")
    np.save(str(path) + ".npy", clip)   # alpha is dropped: the RGB channels as written


VFR_PTS = [0, 40, 200, 230, 500, 520, 900, 1000, 1010, 1300, 1400, 1800, 1850, 2000, 2600, 2700]


def _variable_rate(path: Path) -> None:
    import av

    clip = _clip()
    encode(path, clip, "libx264", "yuv420p", "rgb24", pts=VFR_PTS, options={"qp": "0", "preset": "veryfast"})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        gaps = np.diff([float(frame.pts * stream.time_base) for frame in container.decode(stream)])
    if len(gaps) != len(clip) - 1 or np.ptp(gaps) < 0.1:
        pytest.skip(f"the muxer did not keep the uneven timestamps (gaps {gaps})")
    np.save(str(path) + ".npy", clip)


# -- list files -----------------------------------------------------------------------------------------

def list_with(*bad_lines: str, first: bool = False) -> Callable[[Env], list]:
    """A training list with ``bad_lines`` after the good ones (or before them, ``first``)."""
    def make(env):
        # {good}: the video already on line 1; {other}: a readable video not listed yet
        lines = [line.replace("{good}", str(env.video(0, 0))).replace("{other}", str(env.video(1, 2)))
                 for line in bad_lines]
        if first:
            return env.adapt(env.write("train.txt", "\n".join([*lines, *env.good_lines()]) + "\n"))
        return env.adapt(env.train_list(*lines))
    return make


def _bom_list(env):
    path = env.tmp / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(env.good_lines()) + "\n").encode())
    return env.adapt(path)


def _latin1_list(env):
    path = env.tmp / "train.txt"
    path.write_bytes(("\n".join(env.good_lines()) + "\n").encode() + b"caf\xe9.mp4 1\n")
    return env.adapt(path)


def _outside_root(allow: bool) -> Callable[[Env], list]:
    def make(env):
        root = env.tmp / "root"
        root.mkdir()
        shutil.copy(env.video(0, 0), root / "a.mp4")
        shutil.copy(env.video(0, 1), root / "b.mp4")
        shutil.copy(env.video(1, 2), env.tmp / "escape.mp4")
        listed = env.write("lists/train.txt", "a.mp4 0\nb.mp4 1\n../escape.mp4 2\n")
        return env.adapt(listed, "--data-root", str(root), *(["--allow-outside-root"] if allow else []))
    return make


def _empty_list(env):
    return env.adapt(env.write("train.txt", ""))


def _duplicate_classes(env):
    classes = env.write("classes.txt", "cat\ndog\ncat\n")
    argv = env.adapt(env.train_list())
    argv[argv.index("--classes") + 1] = str(classes)
    return argv


def _eval_label_beyond(env):
    return env.eval(env.write("val.txt", f"{env.video(0, 0, 'val')} 0\n{env.video(0, 1, 'val')} 9\n"))


def _eval_other_folders(env):
    for k, name in enumerate(("cats", "dogs")):
        (env.tmp / "tree" / name).mkdir(parents=True)
        shutil.copy(env.video(0, k, "val"), env.tmp / "tree" / name / "a.mp4")
    return env.eval(env.tmp / "tree")


# -- nothing readable -------------------------------------------------------------------------------------

def _all_missing_list(env, name="gone.txt"):
    return env.write(name, "gone-1.mp4 0\ngone-2.mp4 1\n")


def _adapt_all_missing(env):
    return env.adapt(_all_missing_list(env, "train.txt"))


def _eval_all_missing(env):
    return env.eval(_all_missing_list(env))


def _predict_all_missing(env):
    return ["predict", "--checkpoint", str(env.shared_checkpoint), str(env.tmp / "gone-1.mp4"),
            str(env.tmp / "gone-2.mp4")]


def _embed_all_missing(env):
    return ["embed", "--checkpoint", str(env.shared_checkpoint), "--data", str(_all_missing_list(env)),
            "--output", str(env.tmp / "emb.safetensors"), "--num-workers", "0"]


# -- settings ---------------------------------------------------------------------------------------------

def adapt_with(*extra: str, val: bool = False) -> Callable[[Env], list]:
    def make(env):
        argv = env.adapt(env.train_list(), *extra)
        if val:
            argv += ["--val", str(env.write("val.txt", f"{env.video(0, 0, 'val')} 0\n"))]
        return argv
    return make


def _method_swap(method: str, *extra: str) -> Callable[[Env], list]:
    def make(env):
        argv = env.adapt(env.train_list(), *extra)
        argv[argv.index("--method") + 1] = method
        if method == "frozen":   # --bottleneck is in FAST only for st-adapter's sake; the case adds its own
            index = argv.index("--bottleneck")
            del argv[index:index + 2]
        return argv
    return make


def _unknown_backbone(env):
    argv = env.adapt(env.train_list())
    argv[argv.index("--backbone") + 1] = "nope"
    return argv


def _eval_views(views: str) -> Callable[[Env], list]:
    def make(env):
        return env.eval(env.write("val.txt", f"{env.video(0, 0, 'val')} 0\n"), None, "--views", views)
    return make


# -- checkpoints --------------------------------------------------------------------------------------------

def _val_list(env):
    return env.write("val.txt", f"{env.video(0, 0, 'val')} 0\n{env.video(0, 1, 'val')} 1\n")


def _ckpt_without_config(env):
    folder = env.tmp / "not-a-checkpoint"
    folder.mkdir()
    shutil.copy(env.shared_checkpoint / "adapter.safetensors", folder)
    env.protected.append(folder)
    return env.eval(_val_list(env), folder)


def _ckpt_edited(edit: Callable[[Path], None], keep_manifest: bool = False) -> Callable[[Env], list]:
    """Eval on a copy of the checkpoint changed by ``edit``. Its file manifest (checkpoint.json, where
    adaptvid writes one) is deleted unless ``keep_manifest``: as in a checkpoint saved without one, or as
    the manifest's own error advises, so the loader's own check of the edited file is what answers."""
    def make(env):
        folder = env.checkpoint()   # hashed after the edit: eval leaves even a broken checkpoint as it was
        edit(folder)
        if not keep_manifest:
            (folder / "checkpoint.json").unlink(missing_ok=True)
        return env.eval(_val_list(env), folder)
    return make


def _truncate_manifest(folder: Path) -> None:
    manifest = folder / "checkpoint.json"
    if not manifest.is_file():
        pytest.skip("this adaptvid writes no checkpoint.json manifest")
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])


def _truncate_json(folder: Path) -> None:
    text = (folder / "adaptvid.json").read_text()
    (folder / "adaptvid.json").write_text(text[: len(text) // 2])


def _drop_backbone(folder: Path) -> None:
    config = json.loads((folder / "adaptvid.json").read_text())
    del config["backbone"]
    (folder / "adaptvid.json").write_text(json.dumps(config, indent=2) + "\n")


def _garbage_weights(folder: Path) -> None:
    (folder / "adapter.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + os.urandom(64))


def _renamed_tensors(folder: Path) -> None:
    tensors = load_file(str(folder / "adapter.safetensors"))
    save_file({"head.renamed." + name: t for name, t in tensors.items()}, str(folder / "adapter.safetensors"))


def _reshaped_tensors(folder: Path) -> None:
    tensors = load_file(str(folder / "adapter.safetensors"))
    save_file({name: torch.zeros(*[s + 1 for s in t.shape]) for name, t in tensors.items()},
              str(folder / "adapter.safetensors"))


def _weights_text_file(env):
    notes = env.write("notes.txt", "these are not weights\n")
    env.protected.append(notes)
    return env.adapt(env.train_list(), "--weights", str(notes))


class _Payload:
    """Unpickled, it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_state(keep_manifest: bool) -> Callable[[Env], list]:
    """``trainer_state.pt`` replaced by a pickle whose payload would create the marker; without
    ``keep_manifest`` the checkpoint's file manifest (checkpoint.json, where there is one) is deleted
    too, as its own error message suggests, so the pickle itself reaches ``torch.load``."""
    def make(env):
        argv = env.resume("--epochs", "2")
        torch.save({"optimizer": _Payload(env.marker), "scheduler": {}, "epoch": 1, "step": 1},
                   env.out / "trainer_state.pt")
        if not keep_manifest:
            (env.out / "checkpoint.json").unlink(missing_ok=True)
        return argv
    return make


def _existing_output(env):
    env.out = env.checkpoint()
    return env.adapt(env.train_list())


def _read_only_output(env):
    env.out.mkdir()
    env.out.chmod(0o500)
    if os.access(env.out, os.W_OK):
        env.out.chmod(0o700)
        pytest.skip("running as root: chmod 0o500 does not stop this user from writing, so a read-only "
                    "output folder cannot be made here")
    return env.adapt(env.train_list())


def _output_under_a_file(env):
    blocker = env.write("afile", "not a folder\n")
    env.protected.append(blocker)
    env.out = blocker / "run"
    return env.adapt(env.train_list())


def _output_is_a_file(env):
    env.out = env.write("afile", "not a folder\n")
    env.protected.append(env.out)
    return env.adapt(env.train_list())


def _resume_other_method(env):
    argv = env.resume()
    argv[argv.index("--method") + 1] = "frozen"
    index = argv.index("--bottleneck")
    del argv[index:index + 2]
    return argv


def _resume_finished(env):
    return env.resume()   # trained for 1 epoch; --epochs 1 again leaves nothing to do


# -- some bad among good at test time: counted, named, the rest scored ------------------------------------

def _eval_one_missing(env):
    return env.eval(env.write("val.txt", f"{env.video(0, 0, 'val')} 0\ngone.mp4 1\n{env.video(0, 1, 'val')} 1\n"),
                    None, "--json")


def _embed_one_missing(env):
    data = env.write("val.txt", f"{env.video(0, 0, 'val')} 0\ngone.mp4 1\n{env.video(0, 1, 'val')} 1\n")
    return ["embed", "--checkpoint", str(env.shared_checkpoint), "--data", str(data),
            "--output", str(env.tmp / "emb.safetensors"), "--num-workers", "0"]


def _predict_one_missing(env):
    return ["predict", "--checkpoint", str(env.shared_checkpoint), str(env.video(0, 0, "val")),
            str(env.tmp / "gone.mp4"), "--json"]


def _predict_directory(env):
    (env.tmp / "clips").mkdir()
    return ["predict", "--checkpoint", str(env.shared_checkpoint), str(env.tmp / "clips")]


def counted_eval_skip(env, out, err):
    result = json.loads(out)
    assert result["num_videos"] == 2 and result["skipped"] == 1, result
    assert [line for line in err.splitlines() if SKIP in line and "gone.mp4" in line], err


def counted_embed_skip(env, out, err):
    from safetensors.torch import load_file as load

    assert "2 videos x" in out and "1 skipped" in out, out
    info = json.loads((env.tmp / "emb.json").read_text())
    assert info["skipped"] == 1 and [Path(v).name for v in info["videos"]] == ["000.mp4", "000.mp4"]
    assert load(str(env.tmp / "emb.safetensors"))["indices"].tolist() == [0, 2]   # rows stay tied to the list


def predicted_the_rest(env, out, err):
    results = json.loads(out)
    assert [("top" in r, "error" in r) for r in results] == [(True, False), (False, True)], results


# -- recipes -------------------------------------------------------------------------------------------------

def recipe(text: str) -> Callable[[Env], list]:
    def make(env):
        path = env.write("recipe.yaml", text.format(marker=env.marker))
        return ["adapt", "--recipe", str(path), "--train", str(env.train_list()), "--output", str(env.out), *FAST]
    return make


CASES = [
    # videos: one bad entry among good ones -> counted skip naming it, exit 0 (odd but valid: used)
    pytest.param(Case(one_bad_video("empty.mp4", lambda p: p.write_bytes(b"")), 0,
                      ("empty.mp4", "file is empty"), skipped("empty.mp4")), id="video-zero-byte"),
    pytest.param(Case(lambda env: one_bad_video("cut.mp4", lambda p: _truncated(p, env.video(1, 3)))(env), 0,
                      ("cut.mp4",), skipped("cut.mp4")), id="video-truncated"),
    pytest.param(Case(one_bad_video("text.mp4", lambda p: p.write_bytes(b"not a video at all\n" * 64)), 0,
                      ("text.mp4", "not a video"), skipped("text.mp4")), id="video-not-video-bytes"),
    pytest.param(Case(one_bad_video("missing.mp4", lambda p: None), 0, ("missing.mp4", "no such file"),
                      skipped("missing.mp4")), id="video-missing"),
    pytest.param(Case(one_bad_video("x.mp4", lambda p: p.mkdir()), 0, ("x.mp4", "is a directory"),
                      skipped("x.mp4")), id="video-directory"),
    pytest.param(Case(one_bad_video("tiny.mp4", _tiny), 0, (), read_as_written("tiny.mp4", exact=False)),
                 id="video-tiny-16px"),
    pytest.param(Case(one_bad_video("gray.mov", _grayscale), 0, (), read_as_written("gray.mov", exact=True)),
                 id="video-grayscale"),
    pytest.param(Case(one_bad_video("alpha.mov", _alpha), 0, (), read_as_written("alpha.mov", exact=True)),
                 id="video-alpha"),
    pytest.param(Case(one_bad_video("vfr.mp4", _variable_rate), 0, (), read_as_written("vfr.mp4", exact=False)),
                 id="video-variable-frame-rate"),
    # list files
    pytest.param(Case(list_with("a.mp4 16 0"), 2, ("{tmp}/train.txt:3", "expected 'relative/path label'")),
                 id="list-three-fields"),
    pytest.param(Case(list_with("a.mp4 1.5"), 2, ("{tmp}/train.txt:3", "label an integer")),
                 id="list-label-not-integer"),
    pytest.param(Case(list_with("a.mp4 -1"), 2, ("{tmp}/train.txt:3", "label an integer")),
                 id="list-label-negative"),
    pytest.param(Case(list_with("x.mp4 growing", first=True), 2,
                      ("{tmp}/train.txt:1", "'growing' is not an integer", "--classes")),
                 id="list-header-lookalike"),
    pytest.param(Case(_bom_list, 0, (), trained_without_skips), id="list-utf8-bom"),
    pytest.param(Case(_latin1_list, 2, ("{tmp}/train.txt:3", "not valid UTF-8", "save it as UTF-8")),
                 id="list-not-utf8"),
    pytest.param(Case(_outside_root(False), 2, ("{tmp}/lists/train.txt:3", "outside the data root",
                                                "--allow-outside-root")), id="list-outside-root"),
    pytest.param(Case(_outside_root(True), 0, (), trained_without_skips), id="list-outside-root-allowed"),
    pytest.param(Case(list_with("{good} 0"), 0, ("1 duplicate entry", "already on line 1"),
                      trained_without_skips), id="list-duplicates"),
    pytest.param(Case(_empty_list, 2, ("{tmp}/train.txt: no samples found",)), id="list-empty"),
    pytest.param(Case(list_with("{other} 7"), 2, ("{tmp}/train.txt: label 7 of", "out of range for the 6 classes")),
                 id="list-label-beyond-classes"),
    pytest.param(Case(_eval_label_beyond, 2, ("{tmp}/val.txt: label 9", "out of range")),
                 id="eval-label-beyond-checkpoint"),
    pytest.param(Case(_duplicate_classes, 2, ("{tmp}/classes.txt: duplicated class names ['cat']",)),
                 id="classes-duplicate-names"),
    pytest.param(Case(_eval_other_folders, 2, ("{tmp}/tree: class folder(s) ['cats', 'dogs'] match none",
                                               "rename the folders")), id="eval-folder-names-differ"),
    # nothing readable: no useful work -> exit 1, nothing written
    pytest.param(Case(_adapt_all_missing, 1, ("no optimiser step", "gone-1.mp4", "nothing was saved")),
                 id="adapt-all-missing"),
    pytest.param(Case(_eval_all_missing, 1, ("{tmp}/gone.txt: none of its 2 videos could be read",)),
                 id="eval-all-missing"),
    pytest.param(Case(_predict_all_missing, 1, ("{tmp}/gone-1.mp4: no such file", "{tmp}/gone-2.mp4: no such file")),
                 id="predict-all-missing"),
    pytest.param(Case(_embed_all_missing, 1, ("none of its 2 videos could be read", "nothing was written"),
                      nothing_at("emb.safetensors", "emb.json")), id="embed-all-missing"),
    # some unreadable among readable at test time: counted and named, the rest scored
    pytest.param(Case(_eval_one_missing, 0, ("gone.mp4",), counted_eval_skip), id="eval-one-missing"),
    pytest.param(Case(_embed_one_missing, 0, ("gone.mp4",), counted_embed_skip), id="embed-one-missing"),
    pytest.param(Case(_predict_one_missing, 0, ("{tmp}/gone.mp4: no such file",), predicted_the_rest),
                 id="predict-one-missing"),
    pytest.param(Case(_predict_directory, 1, ("{tmp}/clips", "is a directory")), id="predict-directory"),
    # settings: refused before anything is built or written
    pytest.param(Case(adapt_with("--set", "train.epochs=abc"), 2, ("train.epochs must be an integer, got 'abc'",)),
                 id="set-epochs-abc"),
    pytest.param(Case(adapt_with("--set", "train.epochs=1.5"), 2, ("train.epochs must be an integer, got 1.5",)),
                 id="set-epochs-float"),
    pytest.param(Case(adapt_with("--set", "train=3"), 2, ("train must be a section",)), id="set-train-scalar"),
    pytest.param(Case(adapt_with("--set", "train.nope=1"), 2, ("unknown train setting(s) ['nope']",)),
                 id="set-train-unknown-key"),
    pytest.param(Case(adapt_with("--frames", "0"), 2, ("model.frames must be an integer >= 1, got 0",)),
                 id="frames-zero"),
    pytest.param(Case(adapt_with("--resume", "--overwrite"), 2, ("choose one (--resume or --overwrite)",)),
                 id="resume-and-overwrite"),
    pytest.param(Case(_method_swap("nope"), 2, ("unknown method 'nope'", "adaptvid list")), id="unknown-method"),
    pytest.param(Case(_unknown_backbone, 2, ("unknown backbone 'nope'", "adaptvid list")), id="unknown-backbone"),
    pytest.param(Case(_method_swap("frozen", "--bottleneck", "8"), 2,
                      ("option 'bottleneck' is not an option of frozen", "another method's option")),
                 id="option-of-another-method"),
    pytest.param(Case(_eval_views("0x1"), 2, ("--views", "'0x1'", "CLIPS must be >= 1")), id="eval-views-0x1"),
    pytest.param(Case(_eval_views("abc"), 2, ("--views must look like CLIPSxCROPS", "'abc'")), id="eval-views-abc"),
    pytest.param(Case(adapt_with("--views", "0x1", val=True), 2, ("'0x1'", "CLIPS must be >= 1")),
                 id="adapt-views-0x1"),
    pytest.param(Case(adapt_with("--views", "abc"), 2, ("--views must look like CLIPSxCROPS", "'abc'")),
                 id="adapt-views-abc-without-val"),
    # checkpoints
    pytest.param(Case(_ckpt_without_config, 2, ("{tmp}/not-a-checkpoint/adaptvid.json: no adaptvid checkpoint",)),
                 id="ckpt-no-config"),
    pytest.param(Case(_ckpt_edited(_truncate_json), 2, (r"re:/checkpoint/adaptvid\.json:\d+: not valid JSON",)),
                 id="ckpt-truncated-json"),
    pytest.param(Case(_ckpt_edited(_drop_backbone), 2, ("{tmp}/checkpoint/adaptvid.json: missing 'backbone'",
                                                        "restore it")), id="ckpt-no-backbone-key"),
    pytest.param(Case(_ckpt_edited(_garbage_weights), 2,
                      ("{tmp}/checkpoint/adapter.safetensors: not a readable safetensors file",)),
                 id="ckpt-garbage-safetensors"),
    pytest.param(Case(_ckpt_edited(_renamed_tensors), 2,
                      ("{tmp}/checkpoint/adapter.safetensors: tensors do not match", "unexpected ['head.renamed.")),
                 id="ckpt-wrong-tensor-names"),
    pytest.param(Case(_ckpt_edited(_reshaped_tensors), 2,
                      ("{tmp}/checkpoint/adapter.safetensors: tensors do not match", "wrong shape [")),
                 id="ckpt-wrong-tensor-shapes"),
    pytest.param(Case(_ckpt_edited(_garbage_weights, keep_manifest=True), 2,
                      ("{tmp}/checkpoint", "adapter.safetensors")), id="ckpt-edited-under-its-manifest"),
    pytest.param(Case(_ckpt_edited(_truncate_manifest, keep_manifest=True), 2, ("{tmp}/checkpoint", "checkpoint.json")),
                 id="ckpt-truncated-manifest"),
    pytest.param(Case(_weights_text_file, 2, ("{tmp}/notes.txt", "is not a readable checkpoint for backbone")),
                 id="weights-text-file"),
    pytest.param(Case(_malicious_state(keep_manifest=True), 2, ("{tmp}/checkpoint", "trainer_state.pt")),
                 id="resume-malicious-pickle"),
    pytest.param(Case(_malicious_state(keep_manifest=False), 2, ("{tmp}/checkpoint", "trainer_state.pt")),
                 id="resume-malicious-pickle-no-manifest"),
    pytest.param(Case(_malicious_state(keep_manifest=False), 2, ("trainer_state.pt",),
                      error_line_says("trainer_state.pt", "--overwrite")), id="resume-malicious-pickle-message"),
    pytest.param(Case(_existing_output, 2, ("{tmp}/checkpoint already holds a checkpoint", "--resume",
                                            "--overwrite")), id="output-exists"),
    pytest.param(Case(_output_under_a_file, 2, ("{tmp}/afile",)), id="output-under-a-file"),
    pytest.param(Case(_output_is_a_file, 2, ("{tmp}/afile",)), id="output-is-a-file"),
    pytest.param(Case(_resume_other_method, 2, ("{tmp}/checkpoint",)),
                 id="resume-other-method"),
    pytest.param(Case(_resume_finished, 1, ("--epochs",)), id="resume-finished-run"),
    pytest.param(Case(_read_only_output, 2, ("{tmp}/run", "ermission denied")), id="output-read-only"),
    # recipes
    pytest.param(Case(recipe("backbone: tiny-clip\nmethod: st-adapter\n"
                             "name: !!python/object/apply:os.system [\"touch {marker}\"]\n"), 2,
                      ("{tmp}/recipe.yaml:3: not valid YAML",)), id="recipe-python-tag"),
    pytest.param(Case(recipe("backbone: tiny-clip\nmethod: st-adapter\nnope: 1\n"), 2,
                      ("{tmp}/recipe.yaml: unknown key 'nope'", "allowed:")), id="recipe-unknown-key"),
    pytest.param(Case(recipe("backbone: tiny-clip\nmethod: st-adapter\ntrain:\n  epochs: 1\n   lr: 3\n"), 2,
                      ("{tmp}/recipe.yaml:5: not valid YAML",)), id="recipe-invalid-yaml"),
    # learning rates that cannot train: refused before anything is built
    pytest.param(Case(adapt_with("--lr", "nan"), 2, (r"re:\blr\b.*\bnan\b",)), id="lr-nan"),
    pytest.param(Case(adapt_with("--lr", "inf"), 2, (r"re:\blr\b.*\binf\b",)), id="lr-inf"),
    pytest.param(Case(adapt_with("--lr", "0"), 2, (r"re:\blr\b.*\b0(\.0)?\b",)), id="lr-zero"),
    pytest.param(Case(adapt_with("--lr", "-1"), 2, (r"re:\blr\b.*-1",)), id="lr-negative"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_held(case: Case, demo, checkpoint, shared_hashes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a stray relative write lands here, not in the checkout
    env = Env(tmp_path, demo, checkpoint)
    argv = [str(a) for a in case.make(env)]
    before = {path: tree_hash(path) for path in env.protected}
    out_existed = env.out.exists()
    if (env.out / "adaptvid.json").exists():
        before.setdefault(env.out, tree_hash(env.out))

    code, out, err = run(argv, capsys)

    assert "Traceback" not in out + err, err
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    for expected in case.says:
        expected = expected.replace("{tmp}", str(tmp_path))
        if expected.startswith("re:"):
            assert re.search(expected[3:], err), f"no match for {expected[3:]!r} in stderr:\n{err}"
        else:
            assert expected in err, f"{expected!r} not in stderr:\n{err}"
    if code:   # the error is adaptvid's own line, not a library's
        assert any(line.startswith(f"adaptvid {argv[0]}") for line in err.splitlines()), err
    for path, hashes in before.items():
        assert tree_hash(path) == hashes, f"{path} changed"
    for path, hashes in shared_hashes.items():
        assert tree_hash(path) == hashes, f"{path} (shared) changed"
    if argv[0] == "adapt" and code and env.out not in before:
        assert not any((env.out / name).exists() for name in CHECKPOINT_FILES), "a failed run left a checkpoint"
        if code == 2 and not out_existed:
            assert not env.out.exists(), "a refused run created its output folder"
    assert not env.marker.exists(), "an injected payload ran"
    if case.check is not None:
        case.check(env, out, err)
