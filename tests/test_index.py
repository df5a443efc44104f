"""`adaptvid index` / `search` beyond the round trip: resuming an interrupted build, --update, unreadable
videos, a text-conditioned head reranking its cosine candidates, and FAISS giving the matrix product's
ranking."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.cli import main
from adaptvid.retrieval import Index, build_index
from adaptvid.runner import index as index_module
from adaptvid.runner.retrieval import encode_texts


@pytest.fixture(scope="module")
def meanp():
    return adaptvid.build_model("tiny-clip", "clip4clip", num_frames=4).eval()


def _build(model, demo, output, **options):
    return build_index(model, demo / "val.txt", output, num_workers=0, progress=False, **options)


def _tensors_and_paths(path):
    return load_file(str(path)), json.loads(Path(path).with_suffix(".json").read_text())["videos"]


def test_an_interrupted_build_resumes_from_its_last_part(meanp, demo, tmp_path, monkeypatch):
    whole = tmp_path / "whole.safetensors"
    _build(meanp, demo, whole, save_every=4)
    real, calls = index_module.embed_videos, []

    def stop_after_one_part(model, loader, **kwargs):
        calls.append(len(loader.dataset))
        if len(calls) == 2:
            raise KeyboardInterrupt   # the user's Ctrl-C in the middle of the second part
        return real(model, loader, **kwargs)

    monkeypatch.setattr(index_module, "embed_videos", stop_after_one_part)
    out = tmp_path / "idx.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _build(meanp, demo, out, save_every=4)
    assert not out.exists() and sorted(p.name for p in (tmp_path / "idx.partial").iterdir()) == [
        "build.json", "part-00000.json", "part-00000.safetensors"]

    monkeypatch.setattr(index_module, "embed_videos", lambda m, loader, **kw: calls.append(len(loader.dataset))
                        or real(m, loader, **kw))
    calls.clear()
    result = _build(meanp, demo, out, save_every=4)
    assert calls == [4, 4] and result == {"path": str(out), "num_videos": 12, "added": 12, "skipped": 0}
    assert not (tmp_path / "idx.partial").exists()
    (resumed, resumed_paths), (once, once_paths) = _tensors_and_paths(out), _tensors_and_paths(whole)
    assert resumed_paths == once_paths
    assert torch.equal(resumed["embeddings"], once["embeddings"])   # same batches, same numbers


def test_a_partial_build_of_another_model_is_not_resumed(meanp, demo, tmp_path, monkeypatch):
    out = tmp_path / "idx.safetensors"
    monkeypatch.setattr(index_module, "embed_videos", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    partial = index_module.PartialBuild(out, {"backbone": "tiny-clip", "frames": 8})
    partial.write_part(0, {"embeddings": torch.zeros(1, 4)}, {"videos": ["a.mp4"], "unreadable": []})
    with pytest.raises(ValueError, match="another model.*frames"):
        _build(meanp, demo, out)
    monkeypatch.undo()
    assert _build(meanp, demo, out, overwrite=True)["num_videos"] == 12   # --overwrite starts afresh
    assert not partial.folder.exists()


def test_update_adds_only_the_videos_the_index_lacks(meanp, demo, tmp_path, capsys):
    lines = (demo / "val.txt").read_text().splitlines()
    first = tmp_path / "first.txt"
    first.write_text("".join(f"{demo / line.split()[0]} {line.split()[1]}\n" for line in lines[:5]))
    full = tmp_path / "full.txt"
    full.write_text("".join(f"{demo / line.split()[0]} {line.split()[1]}\n" for line in lines))
    out = tmp_path / "idx.safetensors"
    assert build_index(meanp, first, out, num_workers=0, progress=False)["num_videos"] == 5
    with pytest.raises(FileExistsError, match="--update"):
        build_index(meanp, full, out, num_workers=0, progress=False)
    result = build_index(meanp, full, out, num_workers=0, progress=False, update=True)
    assert result["num_videos"] == 12 and result["added"] == 7
    whole = tmp_path / "whole.safetensors"
    build_index(meanp, full, whole, num_workers=0, progress=False)
    (updated, updated_paths), (once, once_paths) = _tensors_and_paths(out), _tensors_and_paths(whole)
    assert updated_paths == once_paths
    assert torch.allclose(updated["embeddings"], once["embeddings"], atol=1e-6)
    other = adaptvid.build_model("tiny-clip", "clip4clip", num_frames=2).eval()
    with pytest.raises(ValueError, match="another model.*frames"):
        build_index(other, full, out, num_workers=0, progress=False, update=True)


def test_unreadable_videos_are_counted_and_listed(meanp, demo, tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "videos" / name).write_bytes((demo / (demo / "val.txt").read_text().split()[0]).read_bytes())
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "idx.safetensors"
    result = build_index(meanp, tmp_path / "videos", out, num_workers=0, progress=False)
    assert result["num_videos"] == 2 and result["skipped"] == 1
    assert Index.load(out).info["unreadable"] == [str(tmp_path / "videos" / "broken.mp4")]


def test_the_cli_resumes_updates_and_refuses_both_flags(demo, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    common = ["index", str(demo / "val.txt"), "--backbone", "tiny-clip", "--frames", "2", "--weights", "random",
              "--output", str(out), "--num-workers", "0", "--no-progress", "--save-every", "5"]
    assert main(common) == 0
    assert "12 videos" in capsys.readouterr().out
    assert main(common) == 2   # exists: neither --update nor --overwrite
    assert main([*common, "--update"]) == 0
    assert "0 embedded now" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:   # argparse: not allowed with argument --overwrite
        main([*common, "--update", "--overwrite"])
    assert refused.value.code == 2
    assert main([*common, "--save-every", "0", "--overwrite"]) == 2


@pytest.fixture(scope="module")
def xpool():
    torch.manual_seed(3)
    model = adaptvid.build_model("tiny-clip", "x-pool", num_frames=4).eval()
    with torch.no_grad():   # a head far from its initialisation, so that its scores differ from the cosine's
        for p in model.aggregator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def test_a_text_conditioned_head_reranks_with_its_own_scores(xpool, demo, tmp_path):
    out = tmp_path / "xpool.safetensors"
    build_index(xpool, demo / "val.txt", out, num_workers=0, progress=False)
    index = Index.load(out)
    assert index.frames is not None and index.frames.shape == (12, 4, xpool.embed_dim)
    texts = ["a square grows", "a disc fades"]
    ranked = index.search(xpool, texts, k=12, rerank=12)   # every video a candidate: the head's own ranking
    with torch.no_grad():
        head_scores = xpool.aggregator.score(index.frames, encode_texts(xpool, texts, normalize=False))
    for row, results in zip(head_scores, ranked):
        assert [r["video"] for r in results] == [index.paths[int(i)] for i in row.argsort(descending=True)]
        assert [r["score"] for r in results] == pytest.approx(row.sort(descending=True).values.tolist(), abs=1e-5)
    cosine = index.search_embeddings(encode_texts(xpool, texts), k=3)
    reranked = index.search(xpool, texts, k=3, rerank=3)   # only the 3 best by cosine are rescored
    for by_cosine, by_head in zip(cosine, reranked):
        assert {r["video"] for r in by_head} == {r["video"] for r in by_cosine}


def test_faiss_ranks_as_the_matrix_product(meanp, demo, tmp_path):
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    index = Index(torch.randn(500, 16), [f"v{i}.mp4" for i in range(500)])
    queries = torch.randn(7, 16)
    plain = index.search_embeddings(queries, k=10, use_faiss=False)
    fast = index.search_embeddings(queries, k=10, use_faiss=True)
    assert [[r["video"] for r in q] for q in fast] == [[r["video"] for r in q] for q in plain]
    assert [r["score"] for q in fast for r in q] == pytest.approx([r["score"] for q in plain for r in q], abs=1e-5)


def test_use_faiss_without_faiss_names_the_install(monkeypatch):
    monkeypatch.setattr(index_module, "_faiss", lambda: None)
    index = Index(torch.randn(3, 4), ["a", "b", "c"])
    with pytest.raises(ImportError, match=r"adaptvid\[faiss\]"):
        index.search_embeddings(torch.randn(1, 4), use_faiss=True)
    assert len(index.search_embeddings(torch.randn(1, 4), k=2)[0]) == 2   # the matrix product otherwise
