"""``adaptvid.adapt``: one training run from settings — what ``adaptvid adapt`` does, callable from Python.

    adaptvid.adapt("st-adapter/k400-vit-b16-8f", overrides={"train.epochs": 1, "data.train": "train.txt"})
    adaptvid.adapt(backbone="tiny-clip", method="st-adapter", train="train.txt", val="val.txt",
                   output="runs/x", epochs=3, bottleneck=64)
    adaptvid.adapt(demo=True)

Settings are resolved by :func:`adaptvid.runner.settings.resolve_settings` (recipe, then keyword
settings, then overrides); the run builds the model, the datasets (live or from cached backbone
features), applies ``model.init_from``, trains with :func:`adaptvid.train.fit` for the
classification task (``task: retrieval``: ``adaptvid.runner.retrieval.adapt_retrieval`` on captions
files instead), and returns the final metrics.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..checkpoints import init_from
from ..data import read_class_names
from ..model import build_model, count_parameters
from ..tasks import ClassificationTask
from ..train import fit
from ..train.resume import seed_everything
from ..train.trainer import NonFiniteLossError, NoTrainingStepError
from .data import DEFAULT_DEMO_DIR, check_labels, ensure_demo_data, load_samples, make_dataset
from .settings import NoUsefulWorkError, SettingsError, resolve_settings, train_config

logger = logging.getLogger("adaptvid")


def default_output(settings: dict) -> Path:
    return Path("runs") / str(settings.get("name", settings["method"])).replace("/", "-")


def adapt(recipe: Optional[str] = None, *, overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
          demo: bool = False, demo_dir: str = DEFAULT_DEMO_DIR, resume: bool = False, overwrite: bool = False,
          extend: bool = False, allow_other_weights: bool = False,
          cache_features: Optional[str] = None, dry_run: bool = False, **settings: Any) -> dict:
    """Train a video model; returns the final validation metrics (classification: ``top1``, ``top5``,
    ``mean_class``, ``num_videos``, ``skipped``) plus ``train_skipped``, ``steps``, ``nonfinite_steps`` and ``output``.

    ``recipe``: a recipe name (``adaptvid recipes list``) or .yaml path; ``demo=True``: the demo task
    and recipe. ``settings``: recipe sections or flat names (see ``resolve_settings``), e.g.
    ``backbone``, ``method``, ``train`` (a list path) / ``val``, ``output``, ``epochs``, method options.
    ``dry_run``: resolve and validate everything, build nothing, return ``{"settings": ...}``.

    ``resume``: continue the checkpoint in the output folder exactly (refused, with nothing changed, when it is
    incomplete or was trained with another backbone, weights, method or schedule); ``extend`` (with ``resume``):
    continue for a new number of epochs, the cosine schedule stretched from the current step;
    ``allow_other_weights``: resume onto frozen backbone tensors other than those the
    checkpoint was trained on, with a warning instead of an error.
    """
    if resume and overwrite:
        raise SettingsError("resume=True continues the run in the output folder and overwrite=True replaces it: "
                            "choose one (--resume or --overwrite)")
    if extend and not resume:
        raise SettingsError("extend=True (--extend) continues a run for a new number of epochs: pass it with "
                            "resume=True (--resume)")
    recipe = recipe or ("demo" if demo else None)
    resolved = resolve_settings(recipe, overrides, **settings)
    data = resolved.setdefault("data", {})
    retrieval = resolved.get("task", "classification") == "retrieval"
    if demo and not data.get("train") and not dry_run:
        paths = ensure_demo_data(demo_dir)
        if retrieval:   # the demo's captions name object, colour and direction
            data.update(train=paths["captions_train"], val=paths["captions_val"], root=None)
        else:
            data.update(train=paths["train"], val=paths["val"], classes=paths["classes"], root=None)
    cfg = train_config(resolved.get("train", {}))
    output = Path(resolved.get("output") or default_output(resolved))
    if dry_run:
        return {"settings": resolved, "output": str(output), "train": cfg.__dict__}
    if not data.get("train"):
        raise SettingsError("no training data: pass train=LIST (CLI: --train LIST) and val=LIST, a recipe with "
                            "data.train, or demo=True (--demo)")
    if retrieval:
        from .retrieval import adapt_retrieval

        seed_everything(cfg.seed)
        return adapt_retrieval(resolved, cfg, output, resume=resume, overwrite=overwrite, extend=extend,
                               allow_other_weights=allow_other_weights)

    class_names = read_class_names(data["classes"]) if data.get("classes") else None
    outside = bool(data.get("allow_outside_root", False))
    train_samples, folder_classes = load_samples(data["train"], data.get("root"), class_names, outside)
    class_names = class_names or folder_classes
    val_samples = load_samples(data["val"], data.get("root"), class_names, outside)[0] if data.get("val") else None
    num_classes = len(class_names) if class_names else max(s.label for s in train_samples) + 1
    classes_from = data.get("classes") or data["train"]
    check_labels(train_samples, num_classes, data["train"], classes_from)
    if val_samples:
        check_labels(val_samples, num_classes, data["val"], classes_from)

    model_settings = resolved.get("model", {})
    seed_everything(cfg.seed)   # before the model is built: the random init of new modules is seeded too
    model = build_model(resolved["backbone"], resolved["method"], num_classes, class_names=class_names,
                        weights=resolved.get("weights"), num_frames=int(model_settings.get("frames", 8)),
                        head_dropout=float(model_settings.get("head_dropout", 0.0)), **resolved.get("options", {}))
    if model_settings.get("init_from"):
        loaded = init_from(model, model_settings["init_from"])
        logger.info("init-from %s: loaded %d tower/text tensors, skipped %d", model_settings["init_from"],
                       loaded["loaded"], len(loaded["skipped"]))
    train_set = make_dataset(model, data, train_samples, train=True, seed=cfg.seed)
    val_set = make_dataset(model, data, val_samples, train=False, views=cfg.views) if val_samples else None
    if cache_features:
        if cfg.token_drop > 0:   # the cache holds the full-token backbone outputs: nothing would be dropped
            raise SettingsError("--token-drop drops tokens inside the backbone, which --cache-features runs once "
                                "beforehand: use one or the other")
        train_set, val_set = cached_datasets(model, train_set, val_set, cache_features, cfg)

    trainable, total = count_parameters(model)
    logger.info("%s + %s: %s trainable of %s parameters; %d training videos; output %s", resolved["backbone"],
                   resolved["method"], f"{trainable:,}", f"{total:,}", len(train_set), output)
    recorded = {"data": {k: v for k, v in data.items() if k not in ("train", "val")}}
    try:
        result = fit(model, train_set, val_set, cfg, output, class_names=class_names, resume=resume,
                     overwrite=overwrite, extra_config=recorded, task=ClassificationTask.from_train_config(cfg),
                     extend=extend, allow_other_weights=allow_other_weights)
    except NonFiniteLossError:
        raise
    except NoTrainingStepError as error:
        root = data.get("root") or Path(data["train"]).parent
        raise NoUsefulWorkError(f"{data['train']} (data root {root}): {error}; see the warnings above for why") from error
    result["output"] = str(output)
    return result


def cached_datasets(model, train_set, val_set, cache_dir: str, cfg):
    """Swap the video datasets for cached backbone features (the main process extracts, the others wait)."""
    from accelerate import PartialState

    from ..train.feature_cache import cached_dataset

    with PartialState().main_process_first():
        train_set = cached_dataset(model, train_set, cache_dir, "train", cfg.batch_size, cfg.num_workers)
        if val_set is not None:
            val_set = cached_dataset(model, val_set, cache_dir, "val", cfg.batch_size, cfg.num_workers)
    model.from_features = True
    logger.info("training from cached backbone features in %s (%d training clips)", cache_dir, len(train_set))
    return train_set, val_set
