"""--grad-checkpoint: recomputing each block in backward gives the same outputs and gradients."""
import pytest
import torch

from adaptvid import build_model


def _step(model, video, checkpointed):
    model.backbone.grad_checkpoint = checkpointed
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(video)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("backbone", ["tiny-clip", "tiny-hf-clip", "tiny-vit"])
@pytest.mark.parametrize("method", ["full", "st-adapter"])
def test_same_outputs_and_gradients(backbone, method):
    torch.manual_seed(0)
    model = build_model(backbone, method, num_classes=3, num_frames=2).train()
    video = torch.randn(2, 3, 2, 64, 64)
    out, grads = _step(model, video, False)
    out_ck, grads_ck = _step(model, video, True)
    # tolerance: fp32 recomputation runs the same kernels on the same inputs, so 1e-6 is generous
    torch.testing.assert_close(out_ck, out, rtol=0, atol=1e-6)
    assert grads_ck.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_recomputes_in_backward_and_only_in_training():
    model = build_model("tiny-clip", "full", num_classes=3, num_frames=2).train()
    model.backbone.grad_checkpoint = True
    calls = []
    block = model.backbone.views[0].block
    handle = block.register_forward_pre_hook(lambda *a: calls.append(1))  # (recompute stops early)
    model(torch.randn(1, 3, 2, 64, 64)).sum().backward()
    assert len(calls) == 2            # the first pass and the recomputation
    calls.clear()
    model.eval()
    model(torch.randn(1, 3, 2, 64, 64)).sum().backward()
    handle.remove()
    assert len(calls) == 1


def test_running_statistics_updated_once():
    # uniformerv2's local MHRAs hold BatchNorms inside the blocks: the recomputation must not update them again
    torch.manual_seed(0)
    video = torch.randn(2, 3, 2, 64, 64)
    stats = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model("tiny-clip", "uniformerv2", num_classes=3, num_frames=2).train()
        _step(model, video, checkpointed)
        stats.append({n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n})
    assert stats[0]
    for name in stats[0]:
        torch.testing.assert_close(stats[1][name], stats[0][name], rtol=0, atol=1e-6, msg=name)
