"""Adapter-only checkpoints: exact round trips, exactly the trainable tensors, clear errors."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adaptvid
from adaptvid import build_model, count_parameters, create_backbone, load_model
from adaptvid.checkpoints import CONFIG_FILE, WEIGHTS_FILE
from conftest import TINY_BACKBONES, tiny_video

METHODS = ("frozen", "full", "st-adapter")
CLASSES = ["pour", "stir", "cut", "wash", "peel"]
LABELS = torch.tensor([1, 3])


def _build(backbone, method, **options):
    if method == "st-adapter":
        options.setdefault("bottleneck", 16)
    return build_model(backbone, method, num_classes=len(CLASSES), num_frames=4, **options)


def _train_one_step(model):
    """One AdamW step, so the saved tensors are not what a fresh build would give."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    torch.nn.functional.cross_entropy(model(tiny_video()), LABELS).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def _trained(backbone, method, **options):
    torch.manual_seed(0)
    return _train_one_step(_build(backbone, method, **options))


def _outputs(model, video=None):
    model.eval()
    with torch.no_grad():
        return model(tiny_video() if video is None else video)


def _trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _save_tower(backbone, path):
    """A timm tower as its users keep it on disk: the state dict in a safetensors file."""
    file = path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.tower.state_dict().items()}, str(file))
    return str(file)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(backbone, method) -> (trained model, its checkpoint folder), each trained and saved once."""
    cache = {}

    def get(backbone, method):
        if (backbone, method) not in cache:
            model = _trained(backbone, method)
            directory = tmp_path_factory.mktemp(f"{backbone}-{method}")
            model.save_adapter(directory, class_names=CLASSES)
            cache[backbone, method] = (model, directory)
        return cache[backbone, method]

    return get


# -- round trip -------------------------------------------------------------------

@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_gives_identical_outputs(checkpoints, backbone, method):
    model, directory = checkpoints(backbone, method)
    fresh = _build(backbone, method)
    assert not torch.equal(_outputs(fresh), _outputs(model)), "training should have changed the model"

    loaded = load_model(directory)
    video = tiny_video()
    assert torch.equal(_outputs(loaded, video), _outputs(model, video))
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(video), model.encode_video(video))
    assert loaded.class_names == CLASSES
    assert (loaded.pool, loaded.project) == (model.pool, model.project)
    assert loaded.num_frames == model.num_frames
    assert loaded.num_classes == model.num_classes
    assert loaded.methods == model.methods
    # The loaded model can go on training the same tensors.
    assert _trainable_names(loaded) == _trainable_names(model)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_safetensors_holds_exactly_the_trainable_parameters(checkpoints, backbone, method):
    model, directory = checkpoints(backbone, method)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    trainable = _trainable_names(model)

    assert set(tensors) == trainable
    assert len(tensors) == len(trainable)
    assert sum(t.numel() for t in tensors.values()) == count_parameters(model)[0]
    for name, tensor in tensors.items():
        assert torch.equal(tensor, params[name].detach()), name

    tower = {f"backbone.tower.{name}" for name, _ in model.backbone.tower.named_parameters()}
    if method == "frozen":
        assert set(tensors) == {"head.weight", "head.bias"}
    elif method == "full":
        assert tower <= set(tensors)
        assert set(tensors) - tower == {"head.weight", "head.bias"}
    else:
        assert not set(tensors) & tower, "no frozen backbone tensor belongs in an adapter checkpoint"
        assert not any(name.startswith("backbone.tower.") for name in tensors)
        adapters = {name for name in tensors if name.startswith("backbone.slots.")}
        assert adapters == set(tensors) - {"head.weight", "head.bias"}
        assert len(adapters) == 6 * model.backbone.depth  # down, conv, up: weight + bias each, one per block


@pytest.mark.parametrize("method", METHODS)
def test_json_records_backbone_methods_classes_and_version(checkpoints, method):
    model, directory = checkpoints("tiny-vit", method)
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["format"] == "adaptvid-adapter" and config["format_version"] == 1
    assert config["adaptvid_version"] == adaptvid.__version__
    assert config["backbone"] == "tiny-vit"
    assert config["weights"] is None
    assert config["class_names"] == CLASSES
    assert config["num_classes"] == len(CLASSES) and config["num_frames"] == 4
    assert config["pool"] == model.pool
    expected = {
        "frozen": {},
        "full": {},
        "st-adapter": {"bottleneck": 16, "placement": "mlp", "kernel_t": 3},
    }[method]
    assert config["methods"] == [{"name": method, "config": expected}]
    # ST-Adapter's readout: CLS tokens averaged over time, final norm, no projection.
    assert (config["pool"], config["project"]) == (("token-mean", False) if method == "st-adapter" else ("embed-mean", True))
    assert config["preprocess"]["image_size"] == 64


def test_composed_methods_keep_their_order_and_configs(tmp_path):
    model = _trained("tiny-clip", "full,st-adapter", bottleneck=8, placement="attn+mlp", kernel_t=5)
    model.save_adapter(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert [m["name"] for m in config["methods"]] == ["full", "st-adapter"]
    assert config["methods"][1]["config"] == {"bottleneck": 8, "placement": "attn+mlp", "kernel_t": 5}
    assert config["class_names"] is None
    loaded = load_model(tmp_path)
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert loaded.class_names is None


# -- determinism ------------------------------------------------------------------

def _header_tensors(path):
    """The per-tensor entries of a safetensors header (names, dtypes, shapes, offsets), without __metadata__."""
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header.pop("__metadata__", None)
    return header, raw[8 + size:]


def test_saving_and_round_trip_keep_tensors_and_config_exact(checkpoints, tmp_path):
    model, first = checkpoints("tiny-vit", "st-adapter")
    model.save_adapter(tmp_path / "again", class_names=CLASSES)
    load_model(first).save_adapter(tmp_path / "reloaded", class_names=CLASSES)
    for other in (tmp_path / "again", tmp_path / "reloaded"):
        assert (other / CONFIG_FILE).read_bytes() == (first / CONFIG_FILE).read_bytes()
        assert _header_tensors(other / WEIGHTS_FILE) == _header_tensors(first / WEIGHTS_FILE)


@pytest.mark.parametrize("method", METHODS)
def test_saving_twice_and_round_trip_are_byte_identical(method, tmp_path):
    model = _trained("tiny-clip", method)
    folders = [tmp_path / f"save{i}" for i in range(12)]
    for folder in folders:
        model.save_adapter(folder, class_names=CLASSES)
    load_model(folders[0]).save_adapter(tmp_path / "reloaded", class_names=CLASSES)
    folders.append(tmp_path / "reloaded")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        reference = (folders[0] / name).read_bytes()
        for folder in folders[1:]:
            assert (folder / name).read_bytes() == reference, f"{folder / name} differs from {folders[0] / name}"


# -- buffers of the methods' own modules (BatchNorm running statistics) --------------

SIDE = dict(side_width=32, side_head_dim=16)   # side4video: BatchNorms in its side network


def test_saved_buffers_are_the_persistent_buffers_outside_the_library_towers():
    from adaptvid.checkpoints import saved_buffers

    for method in METHODS:
        assert saved_buffers(_build("tiny-clip", method)) == {}
    model = _build("tiny-clip", "st-adapter")
    model.backbone.tower.register_buffer("probe", torch.ones(2))              # library tower: rebuilt, not saved
    model.head.register_buffer("scratch", torch.ones(2), persistent=False)    # not in the state dict
    model.head.register_buffer("stats", torch.zeros(2))
    assert set(saved_buffers(model)) == {"head.stats"}


def test_method_buffers_are_saved_restored_and_byte_identical(tmp_path):
    model = _trained("tiny-clip", "side4video", **SIDE)     # one training step: running statistics moved
    buffers = {name: b for name, b in model.named_buffers()}
    assert buffers and any(name.endswith("running_mean") and b.any() for name, b in buffers.items())
    folders = [tmp_path / f"save{i}" for i in range(3)]
    for folder in folders:
        model.save_adapter(folder, class_names=CLASSES)
    tensors = load_file(str(folders[0] / WEIGHTS_FILE))
    assert set(tensors) == _trainable_names(model) | set(buffers)
    for name, buffer in buffers.items():
        assert torch.equal(tensors[name], buffer), name
    loaded = load_model(folders[0])
    loaded.save_adapter(tmp_path / "reloaded", class_names=CLASSES)
    folders.append(tmp_path / "reloaded")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        reference = (folders[0] / name).read_bytes()
        for folder in folders[1:]:
            assert (folder / name).read_bytes() == reference, f"{folder / name} differs from {folders[0] / name}"
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_a_checkpoint_without_buffers_is_refused_only_where_the_model_has_them(checkpoints, tmp_path):
    model = _trained("tiny-clip", "side4video", **SIDE)
    model.save_adapter(tmp_path / "side", class_names=CLASSES)
    parameters_only = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    target = _copy_with_tensors(tmp_path / "side", tmp_path / "side-old", parameters_only)
    with pytest.raises(ValueError) as info:
        load_model(target)
    message = str(info.value)
    assert str(target / WEIGHTS_FILE) in message and "do not match" in message and "running_mean" in message
    # a model without buffers: the checkpoint of parameters only is all there is, and it loads
    _, directory = checkpoints("tiny-clip", "st-adapter")
    old = _copy_with_tensors(directory, tmp_path / "st-old", load_file(str(directory / WEIGHTS_FILE)))
    torch.testing.assert_close(_outputs(load_model(old)), _outputs(load_model(directory)), rtol=0, atol=0)


# -- backbone weights ---------------------------------------------------------------

def test_weights_override_loads_another_tower(checkpoints, tmp_path):
    model, directory = checkpoints("tiny-vit", "st-adapter")
    source = create_backbone("tiny-vit", weights="random")
    tower_file = _save_tower(source, tmp_path)

    default = load_model(directory)
    override = load_model(directory, weights=tower_file, allow_other_weights=True)
    assert override.weights == tower_file
    for name, value in source.tower.state_dict().items():
        assert torch.equal(override.backbone.tower.state_dict()[name], value), name
    saved = load_file(str(directory / WEIGHTS_FILE))
    for name, p in override.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), saved[name]), name
    assert torch.equal(_outputs(default), _outputs(model))
    assert not torch.allclose(_outputs(override), _outputs(default))


def test_recorded_weights_are_used_when_loading(tmp_path):
    source = create_backbone("tiny-vit", weights="random")
    tower_file = _save_tower(source, tmp_path)
    torch.manual_seed(0)
    model = _train_one_step(_build("tiny-vit", "st-adapter", weights=tower_file))
    model.save_adapter(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())["weights"] == tower_file
    assert torch.equal(_outputs(load_model(tmp_path / "ckpt")), _outputs(model))


def test_weights_given_as_a_path_object_can_be_saved(tmp_path):
    tower_file = Path(_save_tower(create_backbone("tiny-vit", weights="random"), tmp_path))
    model = _build("tiny-vit", "frozen", weights=tower_file)
    model.save_adapter(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())["weights"] == str(tower_file)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [WEIGHTS_FILE, CONFIG_FILE]


# -- errors -----------------------------------------------------------------------

def test_folder_without_config_names_the_path(tmp_path):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_model(empty)
    message = str(info.value)
    assert str(empty / CONFIG_FILE) in message and "save_adapter" in message
    with pytest.raises(FileNotFoundError, match="no adaptvid checkpoint"):
        load_model(tmp_path / "missing")


def test_corrupted_json_names_the_file_and_line(checkpoints, tmp_path):
    _, directory = checkpoints("tiny-vit", "frozen")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes())
    lines = (directory / CONFIG_FILE).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"backbone"' in line)
    lines[index] = '  "backbone": tiny-vit,'   # unquoted string: invalid JSON on this line
    (broken / CONFIG_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        load_model(broken)
    assert f"{broken / CONFIG_FILE}:{index + 1}:" in str(info.value)
    assert "not valid JSON" in str(info.value)


def test_other_json_is_not_taken_for_a_checkpoint(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an adaptvid adapter config"):
        load_model(tmp_path)


def _copy_with_tensors(directory, target, tensors):
    target.mkdir()
    (target / CONFIG_FILE).write_bytes((directory / CONFIG_FILE).read_bytes())
    save_file(tensors, str(target / WEIGHTS_FILE))
    return target


def test_mismatched_tensor_names_say_so(checkpoints, tmp_path):
    _, directory = checkpoints("tiny-vit", "st-adapter")
    tensors = load_file(str(directory / WEIGHTS_FILE))
    dropped = "backbone.slots.1.before_mlp.st_adapter.up.weight"
    extra = tensors.pop(dropped)
    tensors["backbone.slots.1.before_mlp.st_adapter.upp.weight"] = extra
    target = _copy_with_tensors(directory, tmp_path / "renamed", tensors)
    with pytest.raises(ValueError) as info:
        load_model(target)
    message = str(info.value)
    assert str(target / WEIGHTS_FILE) in message and "do not match" in message
    assert dropped in message and "upp.weight" in message


def test_mismatched_tensor_shapes_say_so_and_name_the_file(checkpoints, tmp_path):
    _, directory = checkpoints("tiny-vit", "st-adapter")
    narrower = _build("tiny-vit", "st-adapter", bottleneck=8)   # same names, bottleneck 8 instead of 16
    tensors = {n: p.detach().contiguous() for n, p in narrower.named_parameters() if p.requires_grad}
    target = _copy_with_tensors(directory, tmp_path / "narrow", tensors)
    with pytest.raises(ValueError) as info:
        load_model(target)
    message = str(info.value)
    assert str(target / WEIGHTS_FILE) in message and "do not match" in message
    assert "st_adapter.down.weight" in message


def test_unreadable_safetensors_names_the_file(checkpoints, tmp_path):
    _, directory = checkpoints("tiny-vit", "frozen")
    target = tmp_path / "truncated"
    target.mkdir()
    (target / CONFIG_FILE).write_bytes((directory / CONFIG_FILE).read_bytes())
    (target / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes()[:5])
    with pytest.raises(ValueError, match=re.escape(str(target / WEIGHTS_FILE))):
        load_model(target)


def test_saving_over_random_weights_warns_unless_the_tower_is_saved(tmp_path, caplog):
    seeded = build_model("tiny-vit", "st-adapter", num_classes=2, bottleneck=8)  # weights=None: fixed seed
    seeded.save_adapter(tmp_path / "seeded")
    full = build_model("tiny-vit", "full", num_classes=2, weights="random")  # the whole tower is in the file
    full.save_adapter(tmp_path / "full")
    assert "randomly initialised" not in caplog.text
    model = build_model("tiny-vit", "st-adapter", num_classes=2, weights="random", bottleneck=8)
    model.save_adapter(tmp_path / "random")
    assert "randomly initialised and is not saved" in caplog.text
