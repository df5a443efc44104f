"""adaptvid: turn frozen image foundation models into video models."""
__version__ = "0.1.0"

from . import methods  # noqa: E402,F401  (registers the built-in methods)
from .backbones import BackboneLoadError, create_backbone, list_backbones  # noqa: E402
from .checkpoint import load_model  # noqa: E402
from .methods import get_method, list_methods, register_method  # noqa: E402
from .merge import merge  # noqa: E402
from .model import VideoModel, build_model, count_parameters  # noqa: E402
from .zero_shot import set_classes, zero_shot_model  # noqa: E402
from .xclip_hf import load_xclip  # noqa: E402
from .init_from import init_from  # noqa: E402

__all__ = [
    "__version__", "BackboneLoadError", "VideoModel", "build_model", "count_parameters",
    "create_backbone", "get_method", "list_backbones", "list_methods", "load_model", "merge", "register_method",
    "set_classes", "zero_shot_model", "init_from",
]
