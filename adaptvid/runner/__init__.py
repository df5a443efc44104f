"""The runner: settings in, a run out — the one layer under both the CLI and the Python API.

``adapt`` (train), ``evaluate``, ``predict``, ``embed``, ``merge_checkpoint``; ``resolve_settings``
turns a recipe plus overrides (or keyword settings) into the settings dict every run uses.
"""
from .adapt import adapt
from .inference import embed, evaluate, merge_checkpoint, predict
from .recipes import RecipeError, find_recipe, list_recipes, load_recipe
from .settings import NoUsefulWorkError, SettingsError, resolve_settings

__all__ = ["NoUsefulWorkError", "RecipeError", "SettingsError", "adapt", "embed", "evaluate", "find_recipe",
           "list_recipes", "load_recipe", "merge_checkpoint", "predict", "resolve_settings"]
