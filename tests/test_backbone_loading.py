"""Loading backbones: errors for local files that are not checkpoints, the inner error shown whole, random
transformers towers from a local config, a fast failure when the hub is unreachable, and open_clip's logging.

Nothing here reaches a network: the hub check is replaced by a stand-in and every name lookup or outgoing
connection made while a test runs fails (and is recorded, so that a test can assert there was none)."""
import contextlib
import logging
import os
import socket
import time

import pytest
import torch

from adaptvid import BackboneLoadError, create_backbone
from adaptvid.backbones import hub, loading

HUB_ADVICE = ("hub is unreachable", "HF_HUB_OFFLINE", "--weights")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Offline mode on whatever the shell says (conftest only sets a default), and a fresh hub check state;
    the tests of an unreachable hub switch it off themselves."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_HUB_STATE", {}, raising=False)   # (raising: the module may predate it)


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


GARBAGE = {
    "model.bin": bytes(range(256)) * 40,
    "model.pt": os.urandom(4096),
    "model.safetensors": os.urandom(4096),
    "notes.txt": "these are my notes, not a checkpoint\n",
}


def _assert_unreadable(message, name, path, *expected):
    assert f"{path!r} is not a readable checkpoint for backbone {name!r}" in message, message
    for text in expected:
        assert text in message, message
    for advice in HUB_ADVICE:     # the hub was not involved
        assert advice not in message, message


@pytest.mark.parametrize("filename", sorted(GARBAGE))
@pytest.mark.parametrize("name, expected", [
    ("tiny-clip", ("open_clip expected", "state dict", "adaptvid-tiny-clip")),
    ("tiny-vit", ("timm expected", "vit_tiny_patch16_224", ".safetensors")),
    ("tiny-hf-clip", ("transformers expected", "config.json", "not a single file")),
    ("hf:openai/clip-vit-base-patch16", ("transformers expected", "config.json", "not a single file")),
])
def test_a_file_that_is_no_checkpoint_is_named_with_what_the_library_expected(name, expected, filename, tmp_path):
    path = _write(tmp_path / filename, GARBAGE[filename])
    with pytest.raises(BackboneLoadError) as info:
        create_backbone(name, weights=path)
    _assert_unreadable(str(info.value), name, path, *expected)


@pytest.mark.parametrize("name", ["tiny-hf-clip", "hf:openai/clip-vit-base-patch16", "hf-xclip:microsoft/xclip-base-patch32"])
def test_a_transformers_folder_without_config_json_is_named(name, tmp_path):
    folder = tmp_path / "not-a-model"
    _write(folder / "model.safetensors", os.urandom(512))
    with pytest.raises(BackboneLoadError) as info:
        create_backbone(name, weights=str(folder))
    _assert_unreadable(str(info.value), name, str(folder), "transformers expected", "no config.json")


def test_a_transformers_folder_with_broken_weights_is_named(tmp_path):
    folder = tmp_path / "broken"
    loading.tiny_hf_clip_config().save_pretrained(folder)
    _write(folder / "model.safetensors", os.urandom(4096))
    for name in ("tiny-hf-clip", f"hf:{folder}"):
        with pytest.raises(BackboneLoadError) as info:
            create_backbone(name, weights=None if name.startswith("hf:") else str(folder))
        _assert_unreadable(str(info.value), name, str(folder), "transformers expected", "caused by")


def test_weights_of_another_model_are_told_apart_from_an_unreadable_file(tmp_path):
    from safetensors.torch import save_file

    vit = create_backbone("tiny-vit", weights="random")
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in vit.tower.state_dict().items()}, path)
    with pytest.raises(BackboneLoadError) as info:
        create_backbone("tiny-clip", weights=path)
    message = str(info.value)
    assert f"{path!r} is a checkpoint, but its weights do not fit backbone 'tiny-clip'" in message, message
    assert "Missing key" in message and not any(advice in message for advice in HUB_ADVICE)


def test_the_inner_error_is_shown_whole_after_a_one_line_summary(monkeypatch):
    import open_clip

    lines = [f"line {i}: " + "x" * 300 for i in range(4)]

    def broken(*args, **kwargs):
        raise RuntimeError("\n".join(lines))

    monkeypatch.setattr(open_clip, "create_model", broken)
    with pytest.raises(BackboneLoadError) as info:
        create_backbone("clip")
    message = str(info.value)
    assert message.splitlines()[0] == "backbone 'clip': could not load open_clip ViT-B-16 with pretrained weights 'openai'."
    assert "caused by RuntimeError:" in message
    assert message.splitlines()[-4:] == ["  " + line for line in lines], message


# -- randomly initialised transformers towers ------------------------------------------------------

def test_a_random_hf_tower_builds_from_a_local_folder_with_only_config_json(tmp_path):
    loading.tiny_hf_clip_config().save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == ["config.json"]
    backbone = create_backbone(f"hf:{tmp_path}", weights="random")
    assert (backbone.width, backbone.patch_size, backbone.image_size, backbone.depth) == (64, 16, 64, 2)
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.embed_dim)
    assert backbone.embed(torch.randn(2, 3, 64, 64)).shape == (2, 17, 64)


def _tiny_xclip_config():
    from transformers import XCLIPConfig

    common = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
    return XCLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, **common),
                       vision_config=dict(image_size=64, patch_size=16, num_frames=2, mit_hidden_size=32,
                                          mit_intermediate_size=128, mit_num_hidden_layers=1,
                                          mit_num_attention_heads=2, **common),
                       projection_dim=32, prompt_layers=1, prompt_num_attention_heads=2)


def test_a_random_xclip_tower_builds_from_a_local_folder_with_only_config_json(tmp_path):
    _tiny_xclip_config().save_pretrained(tmp_path)
    backbone = create_backbone(f"hf-xclip:{tmp_path}", weights="random")
    assert (backbone.width, backbone.patch_size, backbone.image_size, backbone.depth) == (64, 16, 64, 2)
    assert backbone.embed(torch.randn(1, 3, 64, 64)).shape == (1, 17, 64)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


@pytest.mark.parametrize("name", ["hf:openai/clip-vit-base-patch16", "hf-xclip:microsoft/xclip-base-patch32"])
def test_a_random_hf_tower_without_its_config_says_a_local_config_works(name, empty_hub_cache):
    with pytest.raises(BackboneLoadError) as info:
        create_backbone(name, weights="random")
    message = str(info.value)
    prefix = name.split(":")[0]
    assert "randomly initialised transformers tower" in message and "still needs its config (config.json)" in message
    assert f"{prefix}:<local folder with config.json> works offline" in message, message
    assert "HF_HUB_OFFLINE is set" in message   # the suite runs offline: only the cache was searched


def test_a_random_hf_tower_from_a_folder_without_config_json_says_so(tmp_path):
    with pytest.raises(BackboneLoadError) as info:
        create_backbone(f"hf:{tmp_path}", weights="random")
    message = str(info.value)
    assert "still needs its config (config.json)" in message and repr(str(tmp_path)) in message
    assert not any(advice in message for advice in HUB_ADVICE)


# -- an unreachable hub ------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and outgoing connection fails at once; the attempts are recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("adaptvid tests: no network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def hub_online_mode(monkeypatch):
    """HF_HUB_OFFLINE unset (as a user's shell would have it) and this process's hub check not yet done;
    whatever the code under test switches is put back afterwards."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def unreachable_hub(monkeypatch, hub_online_mode, no_network):
    """The hub check answers "unreachable"; returns the (host, port) pairs it was asked about."""
    asked = []

    def probe(host, port, timeout=hub.HUB_CHECK_TIMEOUT):
        asked.append((host, port))
        return False

    monkeypatch.setattr(hub, "_probe_hub", probe)
    return asked


UNREACHABLE_NAMES = ["clip", "hf:openai/clip-vit-base-patch16", "timm:vit_tiny_patch16_224.augreg_in21k",
                     "open_clip:ViT-B-32/laion2b_s34b_b79k"]


@pytest.mark.parametrize("name", UNREACHABLE_NAMES)
def test_an_unreachable_hub_fails_at_once_and_says_so(name, unreachable_hub, no_network, empty_hub_cache):
    import open_clip  # noqa: F401  (imports are not what is timed)
    import timm  # noqa: F401
    import transformers  # noqa: F401
    from huggingface_hub import constants

    start = time.monotonic()
    with pytest.raises(BackboneLoadError) as info:
        create_backbone(name)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert f"backbone {name!r}" in message and "is unreachable" in message and "--weights PATH" in message, message
    assert constants.ENDPOINT in message
    assert unreachable_hub == [(hub._hub_address()[1], hub._hub_address()[2])]
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"   # offline from now on
    assert no_network == []


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_hub_is_checked_once_per_process(unreachable_hub, no_network, empty_hub_cache):
    ours, records = logging.getLogger("adaptvid"), _Records()   # the CLI may have set propagate=False on it
    ours.addHandler(records)
    try:
        for name in ("clip", "hf:openai/clip-vit-base-patch16", "clip-b32"):
            with pytest.raises(BackboneLoadError, match="is unreachable"):
                create_backbone(name)
    finally:
        ours.removeHandler(records)
    assert len(unreachable_hub) == 1 and no_network == []
    announced = [m for m in records.messages if "unreachable" in m]
    assert len(announced) == 1 and "local cache only" in announced[0], records.messages


def test_no_hub_check_when_offline_mode_is_set_or_the_hub_is_not_used(monkeypatch, no_network, tmp_path):
    asked = []
    monkeypatch.setattr(hub, "_probe_hub", lambda *args, **kwargs: asked.append(args) or True)
    with pytest.raises(BackboneLoadError, match="HF_HUB_OFFLINE is set"):
        create_backbone("clip")
    with monkeypatch.context() as offline_unset:
        from huggingface_hub import constants

        offline_unset.delenv("HF_HUB_OFFLINE")
        offline_unset.setattr(constants, "HF_HUB_OFFLINE", False)
        for name in ("tiny-clip", "tiny-vit", "tiny-hf-clip"):
            create_backbone(name)
            create_backbone(name, weights="random")
        loading.tiny_hf_clip_config().save_pretrained(tmp_path)
        create_backbone(f"hf:{tmp_path}", weights="random")
    assert asked == [] and no_network == []


def _hub_cache_entry(cache, repo_id, files):
    """A Hugging Face cache entry as hf_hub_download leaves it: refs/main -> snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    _write(repo / "refs" / "main", commit)
    for source in files:
        target = repo / "snapshots" / commit / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def test_with_the_hub_unreachable_a_cached_model_loads_from_the_cache(unreachable_hub, no_network, empty_hub_cache,
                                                                       tmp_path):
    source = create_backbone("tiny-hf-clip", weights="random")
    saved = tmp_path / "saved"
    source.text.model.save_pretrained(saved)
    _hub_cache_entry(empty_hub_cache, "adaptvid-tests/tiny-clip", sorted(saved.iterdir()))
    start = time.monotonic()
    loaded = create_backbone("hf:adaptvid-tests/tiny-clip")
    assert time.monotonic() - start < 5
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))
    assert len(unreachable_hub) == 1 and no_network == []


def test_the_hub_check_asks_the_endpoint_host_or_its_proxy(monkeypatch):
    from huggingface_hub import constants

    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY",
                "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.test")
    assert hub._hub_address() == ("https://hub.example.test", "hub.example.test", 443)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:8080")
    assert hub._hub_address()[1:] == ("127.0.0.1", 8080)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.test")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    assert hub._hub_address()[1:] == ("proxy.example.test", 3128)


def test_the_hub_check_is_a_bounded_connection_attempt():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub._probe_hub("127.0.0.1", server.getsockname()[1], timeout=2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]   # bound, not listening: refused
    start = time.monotonic()
    assert not hub._probe_hub("127.0.0.1", port, timeout=2)
    assert time.monotonic() - start < 3


# -- open_clip's logging ------------------------------------------------------------------------------

@contextlib.contextmanager
def _bare_root_logger():
    """The root logger as in a fresh Python session: no handlers, no filters (the suite's conftest adds a filter)."""
    root = logging.getLogger()
    handlers, filters = root.handlers[:], root.filters[:]
    for handler in handlers:
        root.removeHandler(handler)
    for f in filters:
        root.removeFilter(f)
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for f in root.filters[:]:
            root.removeFilter(f)
        for handler in handlers:
            root.addHandler(handler)
        for f in filters:
            root.addFilter(f)


OPEN_CLIP_RANDOM = [("tiny-clip", None), ("tiny-clip", "random"), ("open_clip:adaptvid-tiny-clip", "random")]


def test_tiny_open_clip_builds_leave_the_root_logger_alone(capsys):
    with _bare_root_logger() as root:
        for name, weights in OPEN_CLIP_RANDOM:
            create_backbone(name, weights=weights)
        assert root.handlers == [] and root.filters == []
    assert "No pretrained weights loaded" not in capsys.readouterr().err


def test_tiny_open_clip_builds_log_no_random_init_warning(caplog):
    root = logging.getLogger()
    filters = root.filters[:]
    for f in filters:     # the suite's conftest hides the warning itself
        root.removeFilter(f)
    try:
        with caplog.at_level(logging.INFO):
            for name, weights in OPEN_CLIP_RANDOM:
                create_backbone(name, weights=weights)
            assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
            logging.warning("No pretrained weights loaded for model 'x'")   # only for the build: gone afterwards
            assert [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
        assert root.filters == []
    finally:
        for f in filters:
            root.addFilter(f)


def test_openai_clip_is_built_with_quick_gelu_as_its_weights_were_trained():
    # open_clip 3 only warns when the architecture's GELU differs from the tag's QuickGELU
    import open_clip

    backbone = create_backbone("clip-b32", weights="random")
    activations = {type(block.mlp.gelu) for block in backbone.tower.transformer.resblocks}
    assert activations == {open_clip.transformer.QuickGELU}
