"""Every shipped recipe validates and runs one smoke epoch on the tiny backbone and a small demo set."""
import json
import shlex

import pytest

from adaptvid.cli import main
from adaptvid.data.demo import make_demo_data
from adaptvid.runner.recipes import list_recipes, load_recipe


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=2, videos_per_class_val=1, num_frames=16)
    return root


RECIPES = sorted(list_recipes())


RETRIEVAL_METHODS = {"clip4clip", "x-pool", "clip-vip"}   # published for text-video retrieval, not classification


def test_every_method_has_kinetics_and_ssv2_recipes():
    from adaptvid import list_methods

    for method in set(list_methods()) - {"frozen", "full", "lora"} - RETRIEVAL_METHODS:
        datasets = {load_recipe(name).get("paper", {}).get("dataset") for name in RECIPES
                    if load_recipe(name)["method"] == method}
        assert {"Kinetics-400", "Something-Something v2"} <= datasets, (method, datasets)


def test_every_retrieval_method_has_an_msrvtt_recipe():
    for method in RETRIEVAL_METHODS:
        recipes = [load_recipe(name) for name in RECIPES if load_recipe(name)["method"] == method]
        assert any(r.get("task") == "retrieval" and "MSR-VTT" in r["paper"]["dataset"] for r in recipes), method


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_runs_a_smoke_epoch(name, demo, tmp_path):
    recipe = load_recipe(name)
    paper = recipe.get("paper", {})
    if "top1" in paper:
        assert paper.get("views") and paper.get("citation"), "a reported number needs its views and source"
    assert recipe.get("command", "").startswith(("adaptvid ", "accelerate launch -m adaptvid "))
    assert main(["adapt", "--recipe", name, "--demo", "--demo-dir", str(demo), "--output", str(tmp_path / "o"),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=2", "--set", "train.views=1x1", "--epochs", "1",
                 "--num-workers", "0", "--no-progress"]) == 0


def _command_argv(command: str) -> list[str]:
    """The adaptvid arguments of a recipe's command line, checked the way its launcher would read it."""
    words = shlex.split(command)
    if words[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(words[2:])
        assert launch.module and launch.training_script == "adaptvid", command   # `-m adaptvid`, runnable
        return list(launch.training_script_args)
    assert words[0] == "adaptvid", command
    return words[1:]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_command_runs_as_written(name, capsys):
    """Every recipe's `command:` parses as its launcher and adaptvid read it; adapt commands resolve and
    validate all their settings in --dry-run (the data files are the user's, so they need not exist)."""
    argv = _command_argv(load_recipe(name)["command"])
    if argv[0] == "adapt":
        assert main([*argv, "--dry-run"]) == 0
        settings = json.loads(capsys.readouterr().out)["settings"]
        assert settings["method"] == load_recipe(name)["method"]
    else:
        from adaptvid.cli.parser import build_parser

        build_parser().parse_args(argv)   # exits (SystemExit) on an unknown flag
