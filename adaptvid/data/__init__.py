"""Video data: readers, frame sampling, transforms, datasets and the demo task."""

from .augment import RandAugment, random_erase
from .captions import (CAPTION_FORMATS, CaptionDataset, CaptionedVideo, collate_captions,
                       read_activitynet, read_captions, read_didemo, read_lsmdc, read_msrvtt,
                       read_msvd, read_webvid)
from .datasets import VideoDataset, collate_videos
from .lists import VideoSample, folder_dataset, read_class_names, read_list_file
from .readers import VideoReadError, available_backends, open_video
from .sampling import dense_indices, parse_views, segment_indices, segment_indices_for_view
from .transforms import VideoTransform, spatial_crops

__all__ = [
    "open_video", "VideoReadError", "available_backends",
    "segment_indices", "segment_indices_for_view", "dense_indices", "parse_views",
    "VideoTransform", "spatial_crops", "RandAugment", "random_erase",
    "VideoSample", "read_list_file", "read_class_names", "folder_dataset",
    "VideoDataset", "collate_videos",
    "CaptionedVideo", "read_captions", "CAPTION_FORMATS", "read_msrvtt", "read_msvd",
    "read_didemo", "read_activitynet", "read_lsmdc", "read_webvid",
    "CaptionDataset", "collate_captions",
    "make_demo_data", "demo_class_names", "demo_captions",
]


def __getattr__(name):
    # Imported lazily so `python -m adaptvid.data.demo` does not find the module
    # already loaded by the package (runpy warns about that).
    if name in ("make_demo_data", "demo_class_names", "demo_captions"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
