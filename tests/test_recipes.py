"""Every shipped recipe validates and runs one smoke epoch on the tiny backbone and a small demo set."""
import pytest

from adaptvid.cli import main
from adaptvid.data.demo import make_demo_data
from adaptvid.recipes import list_recipes, load_recipe


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=2, videos_per_class_val=1, num_frames=16)
    return root


RECIPES = sorted(list_recipes())


def test_every_method_has_kinetics_and_ssv2_recipes():
    from adaptvid import list_methods

    for method in set(list_methods()) - {"frozen", "full", "lora"}:
        datasets = {load_recipe(name).get("paper", {}).get("dataset") for name in RECIPES
                    if load_recipe(name)["method"] == method}
        assert {"Kinetics-400", "Something-Something v2"} <= datasets, (method, datasets)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_runs_a_smoke_epoch(name, demo, tmp_path):
    recipe = load_recipe(name)
    paper = recipe.get("paper", {})
    if "top1" in paper:
        assert paper.get("views") and paper.get("citation"), "a reported number needs its views and source"
    assert recipe.get("command", "").startswith(("adaptvid", "accelerate launch adaptvid"))
    assert main(["adapt", "--recipe", name, "--demo", "--demo-dir", str(demo), "--output", str(tmp_path / "o"),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=2", "--set", "train.views=1x1", "--epochs", "1",
                 "--num-workers", "0", "--no-progress"]) == 0
