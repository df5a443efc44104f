"""Checkpoint I/O and weight importers, one floor above the model.

- ``adapter``: the adapter-only checkpoint format (``adapter.safetensors`` + ``adaptvid.json``);
- ``load``: ``load_model`` (a folder or a Hub repository) and ``push_to_hub``;
- ``init_from``: start a model from the towers of another checkpoint (ViFi-CLIP's bridge and prompt);
- ``xclip_transformers``: transformers ``XCLIPModel`` checkpoints as adaptvid x-clip models;
- ``peft_export``: a LoRA model's adapter as a PEFT adapter folder.
"""
from .adapter import (CONFIG_FILE, WEIGHTS_FILE, load_trainable, read_config, save_adapter, saved_buffers,
                      saved_parameters, saved_tensors)
from .init_from import init_from
from .load import load_model, push_to_hub, resolve_checkpoint
from .peft_export import export_peft_adapter, load_peft_adapter
from .xclip_transformers import import_xclip_weights, load_xclip, transfer_xclip_weights
from ..model import register_weight_importer

register_weight_importer(import_xclip_weights)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "export_peft_adapter", "import_xclip_weights", "load_peft_adapter", "init_from", "load_model", "load_trainable",
           "load_xclip", "push_to_hub", "read_config", "resolve_checkpoint", "save_adapter", "saved_buffers", "saved_parameters", "saved_tensors",
           "transfer_xclip_weights"]
