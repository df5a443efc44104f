"""Methods register themselves by name on import."""
from . import baselines, st_adapter  # noqa: F401  (registration side effects)
from .registry import MethodSpec, get_method, list_methods, register_method

__all__ = ["MethodSpec", "get_method", "list_methods", "register_method"]
