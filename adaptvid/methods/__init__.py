"""Methods register themselves by name when their module is imported: every module in this package is."""
import importlib
import pkgutil

from .registry import MethodSpec, get_method, list_methods, register_method

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "registry" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["MethodSpec", "get_method", "list_methods", "register_method"]
