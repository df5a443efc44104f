import numpy as np
import pytest

from adaptvid.data import dense_indices, parse_views, segment_indices
from adaptvid.data.sampling import segment_indices_for_view


def test_segment_test_indices_are_segment_centres():
    assert segment_indices(32, 8, train=False) == [2, 6, 10, 14, 18, 22, 26, 30]
    assert segment_indices(10, 4, train=False) == [1, 3, 6, 8]  # segments 0-1,2-4,5-6,7-9
    assert segment_indices(5, 1, train=False) == [2]


def test_segment_short_video_repeats_frames_in_order():
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    # Train: segments shorter than a frame collapse onto their start frame.
    rng = np.random.default_rng(0)
    assert segment_indices(3, 8, train=True, rng=rng) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert segment_indices(1, 4, train=True, rng=rng) == [0, 0, 0, 0]


def test_segment_train_draws_one_index_inside_each_segment():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        indices = segment_indices(32, 8, train=True, rng=rng)
        for k, index in enumerate(indices):
            assert 4 * k <= index < 4 * k + 4
        seen.update(indices)
    assert seen == set(range(32))  # every frame is reachable


def test_segment_train_is_reproducible_with_a_seeded_generator():
    a = segment_indices(100, 8, True, np.random.default_rng(7))
    b = segment_indices(100, 8, True, np.random.default_rng(7))
    assert a == b


def test_segment_views_interleave_and_one_view_is_the_centre():
    assert segment_indices_for_view(32, 8, 0, 1) == segment_indices(32, 8, train=False)
    views = [segment_indices_for_view(32, 8, i, 4) for i in range(4)]
    assert views[0][:2] == [0, 4] and views[3][:2] == [3, 7]
    assert sorted(i for view in views for i in view) == list(range(32))
    with pytest.raises(ValueError):
        segment_indices_for_view(32, 8, 4, 4)


def test_dense_test_clip_is_centred_and_strided():
    # Window of 4*2=8 frames in 20: starts 0..12 possible, centre start 6.
    assert dense_indices(20, 4, 2, train=False) == [6, 8, 10, 12]


def test_dense_multi_clip_starts_are_evenly_spread():
    # 64 frames, window 16: 49 possible starts; 3 clips take the centre of each third.
    starts = [dense_indices(64, 8, 2, False, clip_index=i, num_clips=3)[0] for i in range(3)]
    assert starts == [8, 24, 40]


def test_dense_train_start_is_random_but_fits():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        indices = dense_indices(20, 4, 2, train=True, rng=rng)
        assert np.all(np.diff(indices) == 2) and indices[-1] <= 19
        starts.add(indices[0])
    assert starts == set(range(13))


def test_dense_short_video_clamps_to_last_frame():
    assert dense_indices(5, 4, 2, train=False) == [0, 2, 4, 4]
    assert dense_indices(5, 4, 2, train=True, rng=np.random.default_rng(0)) == [0, 2, 4, 4]


@pytest.mark.parametrize("bad", [(0, 8), (10, 0)])
def test_samplers_reject_empty_inputs(bad):
    with pytest.raises(ValueError):
        segment_indices(*bad, train=False)
    with pytest.raises(ValueError):
        dense_indices(*bad, stride=2, train=False)


@pytest.mark.parametrize("text,expected", [("1x1", (1, 1)), ("4x3", (4, 3)),
                                           (" 2X1 ", (2, 1)), ("10x3", (10, 3))])
def test_parse_views_accepts_clips_by_crops(text, expected):
    assert parse_views(text) == expected


@pytest.mark.parametrize("text", ["4by3", "4x", "x3", "4x3x2", "", "0x1", "-1x3", "a x b"])
def test_parse_views_rejects_bad_forms(text):
    with pytest.raises(ValueError, match="CLIPSxCROPS, e.g. 4x3; got"):
        parse_views(text)


def test_parse_views_message_quotes_input():
    with pytest.raises(ValueError) as info:
        parse_views("4by3")
    assert str(info.value) == "--views must look like CLIPSxCROPS, e.g. 4x3; got '4by3'"
    with pytest.raises(ValueError, match="crops must be 1 or 3"):
        parse_views("2x2")
