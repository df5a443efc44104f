"""Checkpoints of training runs: refused incomplete folders, saves as one unit, frozen-weights fingerprints,
resume checks and --extend, non-finite losses, bit-identical runs and resumes, metrics.jsonl on resume."""
import errno
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

import adaptvid
from adaptvid.checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_model
from adaptvid.checkpoints import unit
from adaptvid.checkpoints.fingerprint import FingerprintMismatchError, frozen_fingerprint
from adaptvid.checkpoints.unit import (MANIFEST_FILE, PREVIOUS_DIR, STATE_FILE, CheckpointSaveError,
                                       IncompleteCheckpointError, locate, recover, write_unit)
from adaptvid.cli import main
from adaptvid.tasks import ClassificationTask
from adaptvid.train import TrainConfig
from adaptvid.train.metrics import truncate_metrics
from adaptvid.train.resume import ResumeMismatchError, Schedule
from adaptvid.train.trainer import NonFiniteLossError, NoTrainingStepError
from conftest import tiny_video

# 18 training clips, 4 per step: 5 steps an epoch.
TINY = dict(backbone="tiny-clip", method="st-adapter", bottleneck=16, batch_size=4, num_workers=0, progress=False)
STEPS_PER_EPOCH = 5


class Killed(BaseException):
    """A simulated kill: not an Exception, so nothing on the way catches it."""


def run(demo, out, val=False, **settings):
    """adaptvid.adapt on the demo data (TrainConfig fields without a flat setting name go to ``train=``)."""
    from adaptvid.runner.settings import FLAT_SETTINGS

    data = dict(train=str(demo / "train.txt"), classes=str(demo / "classes.txt"))
    if val:
        data["val"] = str(demo / "val.txt")
    settings = {**TINY, **settings}
    train = {k: settings.pop(k) for k in list(settings) if k in TrainConfig.field_names() and k not in FLAT_SETTINGS}
    return adaptvid.adapt(**settings, **data, output=str(out), overrides={f"train.{k}": v for k, v in train.items()})


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` by relative path (TensorBoard's event files, flushed by a thread, left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not str(p.relative_to(folder)).startswith("tensorboard")}


def metrics(out: Path) -> list[dict]:
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def state(out: Path) -> dict:
    return torch.load(out / STATE_FILE, weights_only=True)


class LossHook:
    """Wraps ClassificationTask.loss; ``action(call, loss, model, unwrapped)`` may raise or return a new loss."""

    def __init__(self, monkeypatch, action):
        self.calls = 0
        original = ClassificationTask.loss

        def loss(task, model, batch, unwrapped):
            self.calls += 1
            value = original(task, model, batch, unwrapped)
            replaced = action(self.calls, value, model, unwrapped)
            return value if replaced is None else replaced

        monkeypatch.setattr(ClassificationTask, "loss", loss)


def kill_at(monkeypatch, call):
    def action(n, *_):
        if n == call:
            raise Killed(f"killed at training step call {n}")
    return LossHook(monkeypatch, action)


@pytest.fixture(scope="module")
def one_epoch(demo, tmp_path_factory):
    """A finished 1-epoch run with validation (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "one-epoch"
    result = run(demo, out, val=True, epochs=1)
    assert result["steps"] == STEPS_PER_EPOCH
    return out


@pytest.fixture(scope="module")
def unfinished(demo, tmp_path_factory):
    """A 3-epoch run (warm-up 0.4 epoch = 2 steps) killed in its second epoch: its checkpoint is epoch 1, step 5."""
    out = tmp_path_factory.mktemp("runs") / "unfinished"
    with pytest.MonkeyPatch.context() as mp:
        kill_at(mp, STEPS_PER_EPOCH + 2)
        with pytest.raises(Killed):
            run(demo, out, epochs=3, warmup_epochs=0.4, log_every=1)
    assert state(out)["epoch"] == 1 and state(out)["step"] == STEPS_PER_EPOCH
    return out


def copied(folder: Path, tmp_path: Path, name="run") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


# -- 1. incomplete folders are refused, and left as they are -------------------------------------------

def _remove_state_and_manifest(out):
    (out / STATE_FILE).unlink()
    (out / MANIFEST_FILE).unlink()


def _truncate_state(out):
    data = (out / STATE_FILE).read_bytes()
    (out / STATE_FILE).write_bytes(data[:len(data) // 2])


def _truncate_state_without_manifest(out):   # a folder of an adaptvid before manifests
    _truncate_state(out)
    (out / MANIFEST_FILE).unlink()


def _corrupt_adapter(out):
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (out / WEIGHTS_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize("damage, expected", [
    (_remove_state_and_manifest, "trainer_state.pt is missing (adapter.safetensors, adaptvid.json are there)"),
    (_truncate_state, "trainer_state.pt has"),
    (_truncate_state_without_manifest, "trainer_state.pt cannot be loaded safely"),
    (_corrupt_adapter, "adapter.safetensors differs from the saved file"),
])
def test_resume_refuses_an_incomplete_folder_and_changes_nothing(damage, expected, one_epoch, demo, tmp_path):
    """Before: a folder with adaptvid.json + adapter.safetensors but no (or a truncated) trainer_state.pt
    was silently trained from scratch: the adapter overwritten, metrics.jsonl appended to."""
    out = copied(one_epoch, tmp_path)
    damage(out)
    before = snapshot(out)
    with pytest.raises(IncompleteCheckpointError) as info:
        run(demo, out, epochs=1, resume=True)
    message = str(info.value)
    assert expected in message and str(out) in message, message
    assert "Nothing was changed" in message or "restore them" in message
    assert "--overwrite" in message or "delete checkpoint.json" in message
    assert snapshot(out) == before


def test_a_run_saved_before_manifests_and_fingerprints_still_resumes(one_epoch, demo, tmp_path, caplog):
    """A folder written by the adaptvid before this change (no manifest, no fingerprint, a trainer state of
    optimiser, scheduler, epoch and step only) resumes, with a warning that the weights cannot be checked."""
    out = copied(one_epoch, tmp_path)
    old = state(out)
    torch.save({k: old[k] for k in ("optimizer", "scheduler", "epoch", "step")}, out / STATE_FILE)
    config = json.loads((out / CONFIG_FILE).read_text())
    del config["frozen_fingerprint"]
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (out / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        result = run(demo, out, epochs=2, resume=True, extend=True)
    assert "records no frozen-weights fingerprint" in caplog.text
    assert result["steps"] == 2 * STEPS_PER_EPOCH and state(out)["epoch"] == 2 and (out / MANIFEST_FILE).is_file()


# -- 2. a checkpoint is saved as one unit ---------------------------------------------------------------

def _unit(directory, tag: str, epoch: int):
    payload = {name: f"{tag}:{name}".encode() * 100 for name in unit.UNIT_FILES}
    writers = {name: (lambda data: lambda path: path.write_bytes(data))(data) for name, data in payload.items()}
    write_unit(directory, writers, {"epoch": epoch, "step": epoch * 10}, {n: len(d) for n, d in payload.items()})
    return payload


def _top_level(directory):
    return {name: (directory / name).read_bytes() for name in unit.UNIT_FILES if (directory / name).is_file()}


@pytest.mark.parametrize("where, call", [("write", 2), ("write", 4), ("link", 2), ("rename", 1), ("replace", 1),
                                         ("replace", 2), ("replace", 3), ("replace", 4)])
def test_a_kill_at_any_point_of_a_save_leaves_the_old_or_the_new_checkpoint(where, call, tmp_path, monkeypatch):
    """Before: adapter, config and trainer state were renamed into place independently (no manifest), so a
    kill between them left a new adapter with an old trainer state. Each point of the save is interrupted."""
    old = _unit(tmp_path, "old", 1)
    calls = {"n": 0}
    original = {"write": unit._write_one, "link": unit._link_or_copy, "replace": unit._replace,
                "rename": unit.os.rename}[where]

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed(f"{where} #{call}")
        return original(*args)

    if where == "rename":
        monkeypatch.setattr(unit.os, "rename", interrupted)
    else:
        monkeypatch.setattr(unit, {"write": "_write_one", "link": "_link_or_copy", "replace": "_replace"}[where],
                            interrupted)
    with pytest.raises(Killed):
        _unit(tmp_path, "new", 2)
    monkeypatch.undo()
    # killed before the 4th replace (the manifest: the commit) at the latest: what a reader finds is the old one
    located = locate(tmp_path, names=unit.UNIT_FILES)
    assert {name: (located.path / name).read_bytes() for name in unit.UNIT_FILES} == old
    assert located.where == ("previous" if where == "replace" else "current")
    actions = recover(tmp_path)
    assert _top_level(tmp_path) == old
    assert locate(tmp_path, names=unit.UNIT_FILES).where == "current"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    expected = "restored the previous checkpoint" if where == "replace" else "partial files of an interrupted save"
    assert any(expected in action for action in actions), actions
    # and the next save works as usual
    new = _unit(tmp_path, "new", 2)
    assert _top_level(tmp_path) == new and not (tmp_path / PREVIOUS_DIR).exists()


def test_a_crash_between_the_renames_of_a_training_save_loads_and_resumes_as_the_old_checkpoint(
        demo, tmp_path, monkeypatch, caplog):
    """Before: a crash after the adapter's rename left epoch 2's adapter beside epoch 1's trainer state."""
    out = tmp_path / "run"
    run(demo, out, epochs=2)
    reference = (out / WEIGHTS_FILE).read_bytes()
    shutil.rmtree(out)
    saves = {"n": 0, "old": None}
    original = unit._replace

    def crash_in_the_second_save(source, target):
        if Path(target).name == WEIGHTS_FILE:
            saves["n"] += 1
            if saves["n"] == 2:
                saves["old"] = snapshot(out)
        if saves["n"] == 2 and Path(target).name == CONFIG_FILE:   # the adapter is renamed, the config is not
            raise Killed("crash between two renames")
        return original(source, target)

    monkeypatch.setattr(unit, "_replace", crash_in_the_second_save)
    with pytest.raises(Killed):
        run(demo, out, epochs=2)
    monkeypatch.undo()
    old = {k: v for k, v in saves["old"].items() if "/" not in k}
    assert (out / WEIGHTS_FILE).read_bytes() != old[WEIGHTS_FILE]   # the new adapter is in place at the top level
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        model = load_model(out)
    assert "a save was interrupted" in caplog.text
    from safetensors.torch import load as load_bytes
    for name, tensor in load_bytes(old[WEIGHTS_FILE]).items():
        assert torch.equal(dict(model.named_parameters())[name].detach(), tensor), name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        run(demo, out, epochs=2, resume=True)
    assert "restored the previous checkpoint (epoch 1, step 5)" in caplog.text
    assert state(out)["epoch"] == 2 and state(out)["step"] == 2 * STEPS_PER_EPOCH
    assert (out / WEIGHTS_FILE).read_bytes() == reference   # and it continued exactly
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_how_many_bytes_were_needed(demo, tmp_path, monkeypatch):
    """Before: torch.save raised a bare OSError midway; nothing said what the save needed."""
    out = tmp_path / "run"
    saves = {"n": 0, "before": None}
    original = unit._write_one

    def full_disk(writer, path):
        if path.name == WEIGHTS_FILE:
            saves["n"] += 1
        if saves["n"] == 2 and path.name == STATE_FILE:
            saves["before"] = snapshot(out)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(writer, path)

    monkeypatch.setattr(unit, "_write_one", full_disk)
    with pytest.raises(CheckpointSaveError) as info:
        run(demo, out, epochs=2)
    monkeypatch.undo()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "no space left" in message
    needed = int(re.search(r"needs about ([\d,]+) bytes", message).group(1).replace(",", ""))
    on_disk = sum((out / name).stat().st_size for name in unit.UNIT_FILES)
    assert 0.9 * on_disk < needed < 2 * on_disk, (needed, on_disk)
    assert "last good checkpoint there (if any) is kept" in message
    assert snapshot(out) == {k: v for k, v in saves["before"].items() if not k.startswith(unit.TEMP_PREFIX)}
    assert state(out)["epoch"] == 1
    run(demo, out, epochs=2, resume=True)
    assert state(out)["epoch"] == 2


# -- 3. checkpoints are tied to their frozen weights ------------------------------------------------------

def test_eval_on_other_backbone_weights_is_refused_unless_allowed(one_epoch, demo, tmp_path, capsys, caplog):
    """Before: `eval --checkpoint DIR --weights random` on a tiny-clip run silently scored the adapter on a
    random tower (16.7% instead of 75%)."""
    out = copied(one_epoch, tmp_path)
    assert main(["eval", "--checkpoint", str(out), "--data", str(demo / "val.txt"), "--weights", "random",
                 "--num-workers", "0", "--json"]) == 2
    err = capsys.readouterr().err
    assert "weights=None (the backbone's default)" in err and "weights='random'" in err and "fingerprint" in err
    assert "--allow-other-weights" in err
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        model = load_model(out, weights="random", allow_other_weights=True)
    assert "allowed: allow_other_weights" in caplog.text and model.weights == "random"
    fingerprint = json.loads((out / CONFIG_FILE).read_text())["frozen_fingerprint"]
    assert fingerprint["tensors"] == len([n for n in model.state_dict() if n.startswith("backbone.tower.")]) > 0
    assert frozen_fingerprint(model, []) != fingerprint and frozen_fingerprint(load_model(out), []) == fingerprint


def test_a_checkpoint_without_fingerprint_loads_with_a_warning(one_epoch, tmp_path, caplog):
    out = copied(one_epoch, tmp_path)
    config = json.loads((out / CONFIG_FILE).read_text())
    del config["frozen_fingerprint"]
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    with pytest.raises(IncompleteCheckpointError, match="delete checkpoint.json"):   # edited after the save
        load_model(out)
    (out / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        load_model(out)
    assert "records no frozen-weights fingerprint" in caplog.text


def _stepped(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model


def test_merged_and_full_checkpoints_hold_their_tower_and_load_on_any_weights(tmp_path):
    """A merged checkpoint (and one of a fully trained tower) holds the whole image tower: the rebuilt weights
    do not matter, so the fingerprint covers nothing of them; an adapter that left the tower frozen is refused."""
    video = tiny_video(frames=4)
    merged = adaptvid.merge(_stepped(adaptvid.build_model("tiny-clip", "zeroi2v", num_classes=3, num_frames=4)))
    full = _stepped(adaptvid.build_model("tiny-clip", "full", num_classes=3, num_frames=4))
    adapter = _stepped(adaptvid.build_model("tiny-clip", "zeroi2v", num_classes=3, num_frames=4))
    for name, model in (("merged", merged), ("full", full), ("adapter", adapter)):
        model.eval().save_adapter(tmp_path / name)
    for name, model in (("merged", merged), ("full", full)):
        again = load_model(tmp_path / name, weights="random").eval()
        with torch.no_grad():
            torch.testing.assert_close(again(video), model(video), rtol=0, atol=0)
    assert json.loads((tmp_path / "merged" / CONFIG_FILE).read_text())["frozen_fingerprint"]["tensors"] == 0
    with pytest.raises(FingerprintMismatchError):
        load_model(tmp_path / "adapter", weights="random")


def test_an_init_from_model_is_tied_to_the_towers_it_copied(tmp_path):
    """init_from copies another checkpoint's towers: a model built that way is refused when that checkpoint
    changed since (its fingerprint covers the frozen tensors after the copy)."""
    bridge = _stepped(adaptvid.build_model("tiny-clip", "full", num_classes=3, num_frames=4))
    bridge.save_adapter(tmp_path / "bridge")
    second = adaptvid.build_model("tiny-clip", "st-adapter", num_classes=3, num_frames=4, bottleneck=8)
    adaptvid.init_from(second, tmp_path / "bridge")
    second.save_adapter(tmp_path / "second")
    load_model(tmp_path / "second")
    _stepped(bridge).save_adapter(tmp_path / "bridge")   # the bridge checkpoint was trained further
    with pytest.raises(FingerprintMismatchError, match="may have changed since"):
        load_model(tmp_path / "second")


def test_resume_on_other_weights_is_refused_unless_allowed(unfinished, demo, tmp_path, caplog):
    out = copied(unfinished, tmp_path)
    before = snapshot(out)
    with pytest.raises(FingerprintMismatchError, match="cannot resume") as info:
        run(demo, out, epochs=3, warmup_epochs=0.4, log_every=1, resume=True, weights="random")
    assert "weights='random'" in str(info.value) and "weights=None" in str(info.value)
    assert snapshot(out) == before
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        result = run(demo, out, epochs=3, warmup_epochs=0.4, log_every=1, resume=True, weights="random",
                     allow_other_weights=True)
    assert "allow_other_weights" in caplog.text and result["steps"] == 3 * STEPS_PER_EPOCH


# -- 4. resume refuses other models and schedules; --extend stretches the schedule -----------------------

@pytest.mark.parametrize("change, expected", [
    (dict(bottleneck=32), "st-adapter option bottleneck: 16 -> 32"),
    (dict(method="aim", bottleneck=None), "method st-adapter -> aim"),
    (dict(backbone="tiny-vit"), "backbone 'tiny-clip' -> 'tiny-vit'"),
    (dict(lr=2e-3), "lr 0.001 -> 0.002"),
    (dict(batch_size=3), "batch_size 4 -> 3"),
    (dict(warmup_epochs=1.0), "warmup_epochs 0.4 -> 1.0"),
    (dict(grad_accum=2), "grad_accum 1 -> 2"),
    (dict(epochs=6), "Pass --extend"),
    (dict(epochs=6, lr=2e-3, extend=True), "--extend changes only the number of epochs"),
])
def test_resume_refuses_another_model_or_schedule_and_names_the_difference(change, expected, unfinished, demo,
                                                                            tmp_path):
    """Before: `--resume --epochs 20` on a 10-epoch run restarted the cosine (lr 0 at step 60, 5.87e-3 at 70),
    and another method or option was trained on silently (or failed later on a tensor mismatch)."""
    out = copied(unfinished, tmp_path)
    before = snapshot(out)
    with pytest.raises(ResumeMismatchError) as info:
        run(demo, out, resume=True, **{**dict(epochs=3, warmup_epochs=0.4, log_every=1), **change})
    assert expected in str(info.value) and "Nothing was changed" in str(info.value), str(info.value)
    assert snapshot(out) == before


def test_extend_continues_with_the_cosine_stretched_from_the_current_step(unfinished, demo, tmp_path, caplog):
    """Before: no --extend; resuming with more epochs restarted the schedule (the lr jumped at the resume step)."""
    out = copied(unfinished, tmp_path)
    lr, step, warmup, old_total, new_total = 1e-3, STEPS_PER_EPOCH, 2, 3 * STEPS_PER_EPOCH, 6 * STEPS_PER_EPOCH
    planned = Schedule.fresh(old_total, warmup)
    with caplog.at_level(logging.WARNING, logger="adaptvid"):
        result = run(demo, out, epochs=6, warmup_epochs=0.4, log_every=1, resume=True, extend=True)
    assert "the cosine learning-rate schedule is stretched from the current step 5" in caplog.text
    assert result["steps"] == new_total
    lrs = {r["step"]: r["lr"] for r in metrics(out) if r["event"] == "train"}
    assert sorted(lrs) == list(range(1, new_total + 1))   # every step once: nothing duplicated
    # logged lr at step s = the lr of step s + 1. Up to the checkpoint: the planned schedule
    assert lrs[step] == pytest.approx(lr * planned.factor(step), rel=1e-9)
    stretched = planned.extended(step, new_total)
    assert stretched.factor(step) == planned.factor(step)                  # continuous at the resume step
    for s in range(step + 1, new_total + 1):
        assert lrs[s] == pytest.approx(lr * stretched.factor(s), rel=1e-9, abs=1e-15)
    decay = [lrs[s] for s in range(step, new_total + 1)]
    assert all(b < a for a, b in zip(decay, decay[1:])) and decay[-1] == 0.0
    assert max(a - b for a, b in zip(decay, decay[1:])) < 0.1 * lr          # no jump anywhere
    assert Schedule.fresh(new_total, warmup).factor(step) != pytest.approx(planned.factor(step))  # a restart would jump


def test_extend_of_a_finished_schedule_is_refused(one_epoch, demo, tmp_path):
    out = copied(one_epoch, tmp_path)
    # 1 epoch of 5 steps, all of them warm-up: at step 5 the lr is at its peak, and --extend goes on from there
    assert json.loads((out / CONFIG_FILE).read_text())["extra"]["train"]["warmup_epochs"] == 1.0
    result = run(demo, out, epochs=2, resume=True, extend=True)
    assert result["steps"] == 2 * STEPS_PER_EPOCH
    with pytest.raises(ResumeMismatchError, match="already reached 0"):
        run(demo, out, epochs=4, resume=True, extend=True)


# -- 5. non-finite losses stop the run, nothing non-finite is saved, metrics stay JSON ----------------------

def test_a_nan_loss_stops_the_run_keeps_the_last_checkpoint_and_exits_non_zero(demo, tmp_path, monkeypatch, capsys):
    """Before: a NaN loss was stepped on (NaN adapter saved), written as NaN into metrics.jsonl (not JSON)."""
    out = tmp_path / "run"
    kept = {}

    def nan_in_epoch_two(call, loss, *_):
        if call == STEPS_PER_EPOCH + 2:
            kept.update(snapshot(out))
            return loss * float("nan")

    LossHook(monkeypatch, nan_in_epoch_two)
    argv = ["adapt", "--backbone", "tiny-clip", "--method", "st-adapter", "--bottleneck", "16", "--train",
            str(demo / "train.txt"), "--classes", str(demo / "classes.txt"), "--output", str(out), "--epochs", "2",
            "--batch-size", "4", "--num-workers", "0", "--no-progress", "--log-every", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "not finite (nan; 1 time(s)" in err and "max_nan_steps=0" in err and "epoch 1, step 5) is kept" in err
    checkpoint = {k: v for k, v in snapshot(out).items() if k in unit.UNIT_FILES or k == MANIFEST_FILE}
    assert checkpoint == {k: v for k, v in kept.items() if k in checkpoint} and len(checkpoint) == 4
    records = metrics(out)
    bad = [r for r in records if r["event"] == "nonfinite"]
    assert bad == [{**bad[0], "loss": None, "epoch": 2, "step": STEPS_PER_EPOCH + 1, "nonfinite_steps": 1}]
    assert records[-1]["event"] == "stopped"


def test_tolerated_nan_steps_are_skipped_and_nan_tensors_are_never_saved(demo, tmp_path, monkeypatch):
    out = tmp_path / "run"
    LossHook(monkeypatch, lambda call, loss, *_: loss * float("inf") if call == 3 else None)
    result = run(demo, out, epochs=1, max_nan_steps=1)
    assert result["nonfinite_steps"] == 1 and result["steps"] == STEPS_PER_EPOCH - 1   # no optimiser step for it
    monkeypatch.undo()

    def poison(call, loss, model, unwrapped):   # a finite loss, but the head turns NaN (as after an overflow)
        if call == STEPS_PER_EPOCH + 3:
            with torch.no_grad():
                unwrapped.head.weight.data.fill_(float("nan"))

    out = tmp_path / "poisoned"
    LossHook(monkeypatch, poison)
    with pytest.raises(NonFiniteLossError, match="trained tensors became non-finite"):
        run(demo, out, epochs=2, max_nan_steps=10)
    assert state(out)["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_model(out).state_dict().values() if t.is_floating_point())
    assert issubclass(NonFiniteLossError, NoTrainingStepError)


@pytest.mark.parametrize("flag", ["--lr", "--backbone-lr"])
@pytest.mark.parametrize("value", ["0", "nan", "-1", "inf"])
def test_non_positive_or_non_finite_learning_rates_are_refused_at_start(flag, value, tmp_path, capsys):
    """Before: --lr 0 / nan / -1 trained (nothing, NaN, or uphill) without a word."""
    name = flag[2:].replace("-", "_")
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        TrainConfig(**{name: float(value)})
    out = tmp_path / "never"
    assert main(["adapt", "--recipe", "demo/st-adapter-tiny", "--train", "x.txt", flag, value, "--output",
                 str(out)]) == 2
    assert f"{name} must be a finite number > 0" in capsys.readouterr().err
    assert not out.exists()


# -- 6. reproducible runs and exact resume ------------------------------------------------------------------

def test_two_runs_of_the_same_command_give_identical_checkpoints(demo, tmp_path):
    """Before: the model was built before the seed was set, so its new modules' random init (and so the adapter)
    depended on whatever ran before in the process."""
    torch.manual_seed(123)
    run(demo, tmp_path / "a", epochs=1)
    run(demo, tmp_path / "b", epochs=1)
    assert (tmp_path / "a" / WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / WEIGHTS_FILE).read_bytes()


EXACT = dict(epochs=2, head_dropout=0.5, hflip=True, mixup=0.8, log_every=1, save_every_steps=2)


def test_a_run_killed_mid_epoch_resumes_at_the_batch_and_ends_bit_identical(demo, tmp_path, monkeypatch):
    """Head dropout, augmentation (random crops, flips) and Mixup on; killed at step 8 (epoch 2, batch 3) after
    the checkpoint of step 6 (epoch 2, batch 1). Before: no mid-epoch checkpoints and no saved random states:
    the resumed run restarted epoch 2 and its dropout/Mixup draws differed from the uninterrupted run's."""
    run(demo, tmp_path / "whole", **EXACT)
    out = tmp_path / "killed"
    kill_at(monkeypatch, 8)
    with pytest.raises(Killed):
        run(demo, out, **EXACT)
    monkeypatch.undo()
    saved = state(out)
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 1, 6)
    assert [r["step"] for r in metrics(out) if r["event"] == "train"][-1] == 7   # a line after the checkpoint
    from adaptvid.data import VideoDataset

    decoded = []
    original = VideoDataset._load
    monkeypatch.setattr(VideoDataset, "_load",
                        lambda self, path, index: decoded.append(index) or original(self, path, index))
    run(demo, out, resume=True, **EXACT)
    assert len(decoded) == 18 - 4   # epoch 2 without its first batch: the skipped batch was not decoded
    assert (out / WEIGHTS_FILE).read_bytes() == (tmp_path / "whole" / WEIGHTS_FILE).read_bytes()
    steps = [r["step"] for r in metrics(out) if r["event"] == "train"]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))                     # 7. no duplicated lines
    assert [r["event"] for r in metrics(out)].count("done") == 1


# -- 7. metrics.jsonl is cut back to the checkpoint on resume ---------------------------------------------

def test_resume_drops_the_metrics_lines_written_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"event": "train", "epoch": 4, "step": 40}, {"event": "eval", "epoch": 4, "step": 50},
             {"event": "train", "epoch": 5, "step": 51}, {"event": "done", "step": 50}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "train", "st')
    assert truncate_metrics(path, 50) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:2]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert truncate_metrics(path, 50, lines=1) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:1]
