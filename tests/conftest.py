import logging
import os
import sys

# Nothing in the suite may wait on a model hub: a stray lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_BACKBONES = ("tiny-clip", "tiny-hf-clip", "tiny-vit")

# Two real processes on CPU (gloo): `accelerate launch --cpu` starts a single process whatever
# --num_processes says (accelerate 1.x uses its simple launcher with --cpu), so torchrun starts them
# and ACCELERATE_USE_CPU tells Accelerate to stay on the CPU. Tests assert num_processes == 2.
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TWO_PROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}

# open_clip warns for every randomly initialised (tiny) model; keep adaptvid's own warnings visible.
logging.getLogger().addFilter(lambda record: "No pretrained weights loaded" not in record.getMessage())


# Tiny models run faster on one thread than split across two busy cores.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo set (3 training and 2 validation videos per class, 16 frames), made once per module."""
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_video(batch: int = 2, frames: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1))


def check_one_training_step(model, video, labels, all_trainable_move: bool = True, nonzero_grads: bool = True) -> None:
    """Backward + one AdamW step: every trainable tensor gets a gradient (non-zero with ``nonzero_grads``;
    zero-init paths can block some at init) and, with ``all_trainable_move``, changes; no frozen tensor
    gets a gradient or changes."""
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(video), labels).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
            assert not nonzero_grads or p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), f"frozen {name} changed"
        elif all_trainable_move:
            assert not torch.equal(p, trainable_before[name]), f"trainable {name} did not move"


def fixed_batch_losses(model, video, labels, steps: int = 10, lr: float = 1e-2, optimizer=None) -> list[float]:
    """Train on one batch for ``steps`` AdamW steps (no weight decay unless ``optimizer`` is given); the losses."""
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(video), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def retrieval_fixed_batch_losses(model, captions_file, steps: int = 8, lr: float = 1e-3) -> list[float]:
    """Contrastive training (RetrievalTask's loss) on one batch of 6 captioned demo clips for ``steps`` AdamW
    steps; the losses. The model is checked by the task first, as a run would."""
    from adaptvid.retrieval import RetrievalTask
    from adaptvid.runner.retrieval import caption_dataset

    dataset = caption_dataset(model, {"root": None}, str(captions_file), train=True)
    task = RetrievalTask()
    task.prepare(model)
    batch = task.collate([dataset[i] for i in range(0, 18, 3)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model, batch, model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_batchnorm_checkpoint_round_trip(model, norm_type, count: int, tmp_path) -> None:
    """Three training steps, then: each of the ``count`` ``norm_type`` modules tracked statistics, the checkpoint
    holds exactly the trainable parameters and those norms' buffers, a reload gives identical eval logits, and
    without the statistics the logits differ."""
    from safetensors.torch import load_file

    from adaptvid.checkpoints import WEIGHTS_FILE, load_model

    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for seed in range(3):
        torch.manual_seed(seed)
        torch.nn.functional.cross_entropy(model(tiny_video()), torch.tensor([1, 3])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, norm_type)}
    assert len(norms) == count
    for norm in norms.values():
        assert norm.num_batches_tracked == 3 and norm.running_mean.any() and not torch.equal(
            norm.running_var, torch.ones_like(norm.running_var))
    buffers = {f"{n}.{b}" for n in norms for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert buffers == {n for n, _ in model.named_buffers()}

    model.save_adapter(tmp_path / "ckpt")
    saved = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad} | buffers
    for name in buffers:
        assert torch.equal(saved[name], model.state_dict()[name]), name
    loaded = load_model(tmp_path / "ckpt").eval()
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model.eval()(video), rtol=0, atol=0)
        for norm in norms.values():     # without the statistics the logits differ
            norm.reset_running_stats()
        assert not torch.equal(model(video), loaded(video))
