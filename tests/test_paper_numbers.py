"""CLIP ViT-B/16, 8 frames: each method's FLOPs overhead against the numbers measured from the
official code (/work/shared/METHODS.md section 8; attention counted, FlopCounterMode).

Counted on the meta device: the same shapes and operations as on a CPU, no arithmetic, about a
second per model. Parameter counts live in each method's own tests.
"""
import pytest

import adaptvid
from adaptvid.model.profile import profile_model

OFFICIAL = [  # method, options, FLOPs ratio vs the bare image tower
    ("st-adapter", {"placement": "mlp"}, 1.0791),
    ("st-adapter", {"placement": "attn+mlp"}, 1.1583),
    ("aim", {}, 1.4383),
    ("evl", {}, 1.0768),
    ("zeroi2v", {}, 1.1588),
]


@pytest.mark.parametrize("method,options,ratio", OFFICIAL, ids=[f"{m}-{o.get('placement', '')}" for m, o, _ in OFFICIAL])
def test_flops_overhead_matches_the_official_code(method, options, ratio):
    model = adaptvid.build_model("clip", method, num_classes=400, weights="random", **options).to("meta")
    result = profile_model(model)
    assert abs(result["gflops_bare_per_view"] - 281.015) / 281.015 < 0.005
    assert abs(result["flops_ratio"] - ratio) <= 0.02, result["flops_ratio"]


def test_merged_zeroi2v_costs_exactly_the_image_model():
    model = adaptvid.build_model("clip", "zeroi2v", num_classes=400, weights="random").eval()
    adaptvid.merge(model)
    result = profile_model(model.to("meta"))
    assert abs(result["flops_ratio"] - 1.0) < 1e-3, result["flops_ratio"]


@pytest.mark.parametrize("method,frames,low,high", [("dist", 16, 1.05, 1.2), ("dualpath", 32, 1.2, 1.5)])
def test_video_encoders_are_compared_with_the_image_model_on_their_sparse_frames(method, frames, low, high):
    model = adaptvid.build_model("clip", method, num_classes=400, weights="random", num_frames=frames).to("meta")
    result = profile_model(model)
    assert result["bare_frames"] == 8
    assert abs(result["gflops_bare_per_view"] - 281.015) / 281.015 < 0.005
    assert low < result["flops_ratio"] < high, result["flops_ratio"]
