"""--compile: the compiled training run equals the eager one, the checkpoint holds the plain keys, and a
compiled model scores videos as the eager one does (``adaptvid eval --compile``, ``evaluate(compile=True)``).

aot_eager captures and runs the same graphs as inductor without generating C++ (inductor compiles C++ for
each graph: seconds to minutes here); ``benchmarks/bench_compile.py`` times inductor and checks every
registered method (``--check-all``)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.cli import main
from adaptvid.data.demo import demo_class_names
from adaptvid.runner.data import eval_loader, load_samples
from adaptvid.tasks import predict_scores
from adaptvid.train.trainer import compiled

FAST = ["--frames", "4", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress",
        "--warmup-epochs", "0"]


@pytest.fixture
def compile_calls(monkeypatch):
    """Every torch.compile call's keyword arguments, with the backend set to aot_eager."""
    monkeypatch.setenv("ADAPTVID_COMPILE_BACKEND", "aot_eager")
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or real_compile(model, **kw))
    torch._dynamo.reset()
    return calls


def test_compiled_training_equals_eager(demo, tmp_path, compile_calls):
    common = ["adapt", "--backbone", "tiny-clip", "--method", "st-adapter", "--train", str(demo / "train.txt"),
              "--val", str(demo / "val.txt"), *FAST]
    assert main([*common, "--output", str(tmp_path / "eager")]) == 0 and not compile_calls
    assert main([*common, "--compile", "--output", str(tmp_path / "compiled")]) == 0
    assert compile_calls == [{"backend": "aot_eager"}]
    eager = load_file(tmp_path / "eager" / "adapter.safetensors")
    compiled_run = load_file(tmp_path / "compiled" / "adapter.safetensors")
    assert set(compiled_run) == set(eager) and not any("_orig_mod" in k for k in compiled_run)
    for key in eager:
        torch.testing.assert_close(compiled_run[key], eager[key], rtol=1e-4, atol=1e-5)


def _scored_model():
    """tiny-clip + ST-Adapter on the demo classes, its adapters and head drawn at random (not zero-init),
    so the scores depend on every module the compiled graph holds."""
    model = adaptvid.build_model("tiny-clip", "st-adapter", class_names=demo_class_names(), num_frames=4,
                                 bottleneck=16)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def test_compiled_eval_scores_equal_eager(demo, tmp_path, compile_calls, capsys):
    model = _scored_model()
    samples, _ = load_samples(str(demo / "val.txt"))
    loader = eval_loader(model, {}, samples, "2x3", batch_size=5, num_workers=0)   # 12 videos: 5, 5, 2
    eager = predict_scores(model, loader)
    scored = predict_scores(compiled(model), loader)
    assert compile_calls == [{"backend": "aot_eager"}] and torch.equal(scored[0], eager[0])
    torch.testing.assert_close(scored[1], eager[1], rtol=0, atol=1e-5)   # softmax scores of 12 videos
    assert not any("_orig_mod" in k for k in model.state_dict())         # the model itself stays plain

    model.save_pretrained(tmp_path / "ckpt", class_names=demo_class_names())
    command = ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(demo / "val.txt"), "--views", "2x1",
               "--num-workers", "0", "--json"]
    capsys.readouterr()
    assert main(command) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*command, "--compile"]) == 0 and len(compile_calls) == 2
    assert json.loads(capsys.readouterr().out) == plain and plain["num_videos"] == 12


def test_compile_refused_for_retrieval_eval(tmp_path):
    with pytest.raises(SystemExit, match="--compile: classification only"):
        main(["eval", "--task", "retrieval", "--captions", str(tmp_path / "c.jsonl"), "--backbone", "tiny-clip",
              "--compile"])


# One method per kind of graph: one graph (ZeroI2V, with dropout in training), a graph break at an in-place
# `out=` product (EVL's inference path), and text-side breaks (tokenising, a Python int of a tensor:
# Efficient-Prompt). benchmarks/bench_compile.py --check-all runs this for every registered method.
@pytest.mark.parametrize("method", ["zeroi2v", "evl", "efficient-prompt"])
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace the builtin")   # the tokeniser's, expected
def test_compiled_method_equals_eager(method):
    from torch._dynamo.backends.registry import lookup_backend

    torch._dynamo.reset()
    model = adaptvid.build_model("tiny-clip", method, class_names=["square growing", "disc fading", "red turning blue"],
                                 num_frames=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():   # off the zero initialisation, so an adapter path cannot hide behind a zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    graphs = []
    aot_eager = lookup_backend("aot_eager")
    compiled_model = torch.compile(model, backend=lambda gm, inputs: graphs.append(gm) or aot_eager(gm, inputs))
    video = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(2))

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(video), model(video), rtol=0, atol=1e-5)
    assert graphs, "the compiled forward ran no graph"

    model.train()
    runs = []
    for net in (model, compiled_model):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)   # the same dropout masks in both runs
        logits = net(video)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
        runs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (eager_logits, eager_grads), (compiled_logits, compiled_grads) = runs
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=0, atol=1e-5)
    assert set(compiled_grads) == set(eager_grads) and eager_grads
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=0, atol=1e-5,
                                   msg=lambda message, name=name: f"{name}: {message}")
