"""A normal (non-editable) install carries everything: every subpackage, the backbone configs and the
recipes (package data at adaptvid/recipes/), so `adaptvid recipes list` and `adapt --demo` work from it."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "adaptvid").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "adaptvid.recipes" in listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """adaptvid built as a wheel and installed into a bare folder (its dependencies from this environment)."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("adaptvid-*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def _run(installed, *args, cwd):
    # The editable install's finder would shadow the installed copy: run with it off the path, from an
    # empty folder, with the installed folder first.
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
            "import adaptvid, adaptvid.cli; assert adaptvid.__file__.startswith(sys.argv[1]), adaptvid.__file__; "
            "sys.exit(adaptvid.cli.main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, str(installed), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_the_installed_wheel_lists_and_shows_the_recipes(installed, tmp_path):
    listed = _run(installed, "recipes", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    expected = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))
    assert names == expected
    shown = _run(installed, "recipes", "show", "demo/st-adapter-tiny", cwd=tmp_path)
    assert shown.stdout == (ROOT / "recipes" / "demo" / "st-adapter-tiny.yaml").read_text()
    dry = _run(installed, "adapt", "--demo", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and '"backbone": "tiny-clip"' in dry.stdout, dry.stderr[-2000:]
