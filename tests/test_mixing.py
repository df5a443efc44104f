"""Mixup / CutMix on video batches and their soft targets."""
import pytest
import torch

import adaptvid
from adaptvid.train import TrainConfig, fit
from adaptvid.tasks.mixing import Mixer, soft_cross_entropy
from conftest import tiny_video


def test_targets_are_smoothed_one_hots_mixed_with_the_reversed_batch():
    mixer = Mixer(label_smoothing=0.1)
    targets = mixer.targets(torch.tensor([0, 2]), 4, lam=0.7)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))
    assert torch.allclose(targets[0], torch.tensor([0.7 * 0.925 + 0.3 * 0.025, 0.025, 0.7 * 0.025 + 0.3 * 0.925, 0.025]))
    plain = mixer(torch.ones(2, 3, 2, 8, 8), torch.tensor([0, 2]), 4)[1]      # nothing enabled: lam 1
    assert torch.allclose(plain, Mixer(label_smoothing=0.1).targets(torch.tensor([0, 2]), 4, 1.0))


def test_mixup_blends_whole_clips_with_the_lam_of_its_targets():
    video = torch.randn(2, 3, 4, 8, 8)
    mixed, targets = Mixer(mixup_alpha=0.8, seed=3)(video, torch.tensor([0, 1]), 2)
    lam = targets[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed, lam * video + (1 - lam) * video.flip(0), atol=1e-6)


def test_cutmix_pastes_one_box_into_every_frame_and_lam_is_the_area_kept():
    video = torch.zeros(2, 3, 4, 16, 16)
    video[1] = 1.0
    for seed in range(5):
        mixed, targets = Mixer(cutmix_alpha=1.0, seed=seed)(video, torch.tensor([0, 1]), 2)
        pasted = mixed[0, 0] == 1.0                                    # (T, H, W): where clip 1 went into clip 0
        assert all(torch.equal(pasted[0], pasted[t]) for t in range(4))
        assert targets[0, 0].item() == pytest.approx(1 - pasted[0].float().mean().item())


def test_the_same_seed_gives_the_same_mixes():
    video, labels = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 3])
    a = Mixer(0.8, 1.0, seed=7)(video, labels, 4)
    b = Mixer(0.8, 1.0, seed=7)(video, labels, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=">= 0"):
        Mixer(mixup_alpha=-1)


def test_soft_cross_entropy_equals_cross_entropy_on_one_hots():
    logits, labels = torch.randn(3, 5), torch.tensor([0, 4, 2])
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), torch.nn.functional.cross_entropy(logits, labels))


def test_training_with_mixup_and_cutmix_runs_and_refuses_cached_features(tmp_path):
    model = adaptvid.build_model("tiny-clip", "st-adapter", num_classes=3, num_frames=4, bottleneck=8)
    clips = [{"video": tiny_video(batch=1)[0], "label": i % 3, "index": i} for i in range(4)]
    cfg = TrainConfig(epochs=1, batch_size=2, num_workers=0, progress=False, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    fit(model, clips, None, cfg, tmp_path / "run")
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    model.from_features = True
    with pytest.raises(ValueError, match="cached features"):
        fit(model, clips, None, cfg, tmp_path / "again")
