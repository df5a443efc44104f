"""Videos stored as folders of extracted frames (``<video>/img_00001.jpg``).

SSv2 and many mmaction setups ship frames instead of video files.  A folder is
read as one video: the frame files are found by their naming pattern
(``img_00001.jpg``, ``00001.jpg``, ``frame_0001.png``, ...), ordered by the
number in the name (so ``img_10`` follows ``img_9``), and frame ``i`` is the
``i``-th file.  Frame folders carry no frame rate, so ``fps`` comes from the
caller (30 by default).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from .reader_base import VideoReader, VideoReadError, reduced_size

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FPS = 30.0
# "<prefix><number>.<ext>": the last run of digits before the extension is the frame number.
_FRAME_NAME = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<ext>\.[A-Za-z]+)$")
# When several patterns are equally common (mmaction's rawframes put img_, flow_x_
# and flow_y_ files in one folder), these prefixes name the RGB frames.
_RGB_PREFIXES = ("img_", "img", "image_", "image", "frame_", "frame", "")


def frame_files(folder: str) -> list[str]:
    """The frame files of `folder` in frame order (full paths).

    Raises VideoReadError naming the folder when it holds no numbered images,
    when two naming patterns are equally plausible, or when two files carry the
    same frame number (``img_1.jpg`` and ``img_01.jpg``).
    """
    groups: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for name in os.listdir(folder):
        match = _FRAME_NAME.match(name)
        if match is None or match["ext"].lower() not in IMAGE_EXTENSIONS:
            continue
        groups[(match["prefix"], match["ext"])].append((int(match["number"]), name))
    if not groups:
        raise VideoReadError(folder, "is a directory, not a video file, and holds no numbered "
                             "image files (frames such as img_00001.jpg or 00001.png)",
                             "point the list file at a video file or a frame folder")
    most = max(len(files) for files in groups.values())
    candidates = [key for key, files in groups.items() if len(files) == most]
    if len(candidates) > 1:
        known = [key for key in candidates if key[0].lower() in _RGB_PREFIXES]
        if len(known) != 1:
            names = ", ".join(f"{prefix}<N>{ext}" for prefix, ext in sorted(candidates))
            raise VideoReadError(folder, f"several frame patterns with {most} files each: {names}",
                                 "keep one pattern per folder (RGB frames as img_<N>.jpg)")
        candidates = known
    files = sorted(groups[candidates[0]])
    for (number, name), (next_number, next_name) in zip(files, files[1:]):
        if number == next_number:
            raise VideoReadError(folder, f"'{name}' and '{next_name}' are both frame {number}",
                                 "remove the duplicate frame file")
    return [os.path.join(folder, name) for _, name in files]


class FrameFolderReader(VideoReader):
    """A folder of frame images behind the VideoReader interface.

    `short_side` (optional) loads JPEG frames that libjpeg can decode at 1/2,
    1/4 or 1/8 scale (DCT scaling through PIL's ``draft``) at that scale and
    resizes them so their shorter side is `short_side` (never enlarged); a
    frame no DCT scale fits (or a PNG) is returned at full size, since a resize
    here would only add to the transform's.
    """

    backend = "frames"

    def __init__(self, path: str, fps: float | None = None, short_side: int | None = None):
        self.files = frame_files(path)
        self.short_side = short_side
        self._size: tuple[int, int] | None = None  # (height, width) of frame 0, on disk
        super().__init__(path, len(self.files), DEFAULT_FPS if fps is None else fps)

    def _load(self, file: str) -> np.ndarray:
        from PIL import Image

        with Image.open(file) as image:
            size = (image.height, image.width)
            if self._size is None:
                self._size = size
            elif size != self._size:
                raise VideoReadError(self.path, f"frame '{os.path.basename(file)}' is "
                                     f"{size[1]}x{size[0]}, the first frame is "
                                     f"{self._size[1]}x{self._size[0]}",
                                     "all frames of a video must have one size; re-extract them")
            target = reduced_size(size[0], size[1], self.short_side)
            if target is not None:
                height, width = target
                image.draft("RGB", (width, height))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
                if image.size != (size[1], size[0]):   # libjpeg scaled it: finish the reduction here
                    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
                # No DCT scale fits (e.g. 720p to 448, a PNG): a resize here would only add to the
                # transform's own (bench_data.py measured 0.5x), so the frame stays full size.
            return np.asarray(image.convert("RGB"))

    def _decode_sorted(self, indices):
        return np.stack([self._load(self.files[i]) for i in indices])
