import numpy as np
import pytest

from adaptvid.data import VideoDataset, VideoSample, available_backends, open_video
from adaptvid.data.transforms import short_side_resize, to_tensor

BACKENDS = [b for b in ("decord", "pyav") if b in available_backends()]


@pytest.fixture(scope="module")
def clip96(tmp_path_factory, video_tools):
    pattern_frames, encode = video_tools
    return encode(tmp_path_factory.mktemp("r") / "c.mp4", pattern_frames(16, 96, 128),
                  options={"qp": "0"})


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduced_decode_size_and_pixels(clip96, backend):
    full = open_video(clip96, backend).get_frames(range(16))
    reference = short_side_resize(to_tensor(full), 48).permute(0, 2, 3, 1).numpy().astype(int)
    small = open_video(clip96, backend, short_side=48).get_frames(range(16))
    assert small.shape == (16, 48, 64, 3) and small.dtype == np.uint8
    error = np.abs(small.astype(int) - reference)
    # Different scalers (swscale vs torch antialias): measured mean 1.05-1.08, max 17.
    assert error.mean() < 2.0 and error.max() <= 32
    # Never enlarged.
    assert open_video(clip96, backend, short_side=200).get_frames([0]).shape == (1, 96, 128, 3)


def test_dataset_outputs_keep_their_shape(clip96):
    samples = [VideoSample(clip96, 0)]
    for train in (True, False):
        full = VideoDataset(samples, num_frames=4, size=32, train=train)[0]["video"]
        auto = VideoDataset(samples, num_frames=4, size=32, train=train, decode_short_side="auto")
        assert auto.decode_short_side == (64 if train else 32)
        assert auto[0]["video"].shape == full.shape == (3, 4, 32, 32)
