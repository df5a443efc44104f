"""--compile: the compiled training run equals the eager one, and the checkpoint holds the plain keys."""
import torch
from safetensors.torch import load_file

from adaptvid.cli import main

FAST = ["--frames", "4", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress",
        "--warmup-epochs", "0"]


def test_compiled_training_equals_eager(demo, tmp_path, monkeypatch):
    # aot_eager captures and runs the same graphs without generating C++ (inductor takes minutes here)
    monkeypatch.setenv("ADAPTVID_COMPILE_BACKEND", "aot_eager")
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or real_compile(model, **kw))
    common = ["adapt", "--backbone", "tiny-clip", "--method", "st-adapter", "--train", str(demo / "train.txt"),
              "--val", str(demo / "val.txt"), *FAST]
    assert main([*common, "--output", str(tmp_path / "eager")]) == 0 and not calls
    assert main([*common, "--compile", "--output", str(tmp_path / "compiled")]) == 0
    assert calls == [{"backend": "aot_eager"}]
    eager = load_file(tmp_path / "eager" / "adapter.safetensors")
    compiled = load_file(tmp_path / "compiled" / "adapter.safetensors")
    assert set(compiled) == set(eager) and not any("_orig_mod" in k for k in compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
