"""Import the official CLIP4Clip checkpoints (ArrowLuo/CLIP4Clip) as ``clip4clip`` models.

The official trainer (``main_task_retrieval.py``, ``save_model``) writes ``pytorch_model.bin.<epoch>`` =
``CLIP4Clip.state_dict()``: the whole fine-tuned CLIP under ``clip.*`` (OpenAI-CLIP layout, both towers and
the logit scale; the text tower is needed for retrieval) and the similarity header, so this is a full-form
import. The header is read from the keys:

=====================================================  ========================================================
official                                                adaptvid (``sim_header``)
=====================================================  ========================================================
no header keys                                          ``meanP``
``frame_position_embeddings.weight``,                   ``seqTransf``: ``aggregator.frame_position_embeddings``,
``transformerClip.resblocks.i.*``                       ``aggregator.blocks.i.*``
``lstm_visual.{weight,bias}_{ih,hh}_l0``                ``seqLSTM``: ``aggregator.lstm.*`` (the official
(+ ``frame_position_embeddings.weight``)                seqLSTM's position table is never used: dropped)
``cross.embeddings.position_embeddings.weight``,        ``tightTransf``: ``aggregator.position_embeddings``,
``cross.transformer.resblocks.i.*``,                    ``aggregator.blocks.i.*``,
``cross.pooler.ln_pool.*`` / ``cross.pooler.dense.*``,  ``aggregator.pool_norm.*`` / ``aggregator.pool_dense.*``,
``similarity_dense.*``                                  ``aggregator.similarity_dense.*``
=====================================================  ========================================================

The number of header blocks (``--cross_num_hidden_layers``) is read from the keys. Not in the tensors, so
options: ``num_frames`` (``--max_frames``; default 12, the official MSR-VTT scripts' value), the head counts
(``heads=`` / ``text_heads=``, ``width // 64`` by default as in the official code; the cross and seqTransf
blocks use the text tower's), ``cross_text_chunk``. The trainer's fp16 CLIP tensors (``convert_weights``) are
loaded into the fp32 model.
"""
from __future__ import annotations

import re

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "clip4clip"
DEFAULT_FRAMES = 12
_SEQ_BLOCK = re.compile(r"^transformerClip\.resblocks\.(\d+)\.(.+)$")
_CROSS_BLOCK = re.compile(r"^cross\.transformer\.resblocks\.(\d+)\.(.+)$")
_LSTM = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
_CROSS_FIXED = {
    "cross.embeddings.position_embeddings.weight": "aggregator.position_embeddings.weight",
    "cross.pooler.ln_pool.weight": "aggregator.pool_norm.weight",
    "cross.pooler.ln_pool.bias": "aggregator.pool_norm.bias",
    "cross.pooler.dense.weight": "aggregator.pool_dense.weight",
    "cross.pooler.dense.bias": "aggregator.pool_dense.bias",
    "similarity_dense.weight": "aggregator.similarity_dense.weight",
    "similarity_dense.bias": "aggregator.similarity_dense.bias",
}


def _sim_header(head: dict) -> str:
    """The official ``--sim_header`` the header tensors were made by."""
    if any(k.startswith(("cross.", "similarity_dense.")) for k in head):
        return "tightTransf"
    if any(k.startswith("transformerClip.") for k in head):
        return "seqTransf"
    if any(k.startswith("lstm_visual.") for k in head):
        return "seqLSTM"
    if not head:
        return "meanP"
    raise CheckpointImportError(
        f"clip4clip: header keys {sorted(head)[:6]} match no official sim_header (meanP: none; seqLSTM: lstm_visual.*; "
        "seqTransf: transformerClip.*; tightTransf: cross.*, similarity_dense.*); is it a CLIP4Clip checkpoint?")


def _blocks(head: dict, pattern: re.Pattern, target: str, tensors: dict) -> int:
    """Map numbered official blocks to ``target.<i>.<rest>``; returns how many blocks there are."""
    found = set()
    for key, value in head.items():
        match = pattern.match(key)
        if match:
            tensors[f"{target}.{match.group(1)}.{match.group(2)}"] = value
            found.add(int(match.group(1)))
    if found != set(range(len(found))) or not found:
        raise CheckpointImportError(f"clip4clip: the header's blocks are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _map_header(sim_header: str, head: dict) -> tuple[dict, dict]:
    """(adaptvid tensors, method options) of the header; every official key is used (or knowingly dropped)."""
    tensors, options = {}, {"sim_header": sim_header}
    if sim_header == "seqTransf":
        tensors["aggregator.frame_position_embeddings.weight"] = head["frame_position_embeddings.weight"]
        options["transf_layers"] = _blocks(head, _SEQ_BLOCK, "aggregator.blocks", tensors)
    elif sim_header == "seqLSTM":
        for name in _LSTM:
            tensors[f"aggregator.lstm.{name}"] = head[f"lstm_visual.{name}"]
    elif sim_header == "tightTransf":
        for official, ours in _CROSS_FIXED.items():
            tensors[ours] = head[official]
        options["transf_layers"] = _blocks(head, _CROSS_BLOCK, "aggregator.blocks", tensors)
    return tensors, options


def _known(sim_header: str, key: str) -> bool:
    if sim_header == "seqTransf":
        return key == "frame_position_embeddings.weight" or bool(_SEQ_BLOCK.match(key))
    if sim_header == "seqLSTM":   # the official seqLSTM also builds a position table its forward never reads
        return key == "frame_position_embeddings.weight" or key in {f"lstm_visual.{n}" for n in _LSTM}
    if sim_header == "tightTransf":
        return key in _CROSS_FIXED or bool(_CROSS_BLOCK.match(key))
    return False


def convert_clip4clip(state: dict, options: dict) -> Conversion:
    """Official ``pytorch_model.bin.<epoch>`` -> Conversion (full form: both CLIP towers + the header)."""
    if "clip.visual.conv1.weight" not in state:
        raise CheckpointImportError(
            "clip4clip: an official CLIP4Clip checkpoint (pytorch_model.bin.<epoch>) holds the whole CLIP under 'clip.' "
            f"('clip.visual.conv1.weight', ...); this one has {sorted(state)[:6]}")
    heads = {k: options[k] for k in ("heads", "text_heads") if k in options}
    tower, rest = split_openai_clip(state, prefix="clip.", **heads)
    if tower is None or "token_embedding.weight" not in tower.tensors:
        raise CheckpointImportError("clip4clip: the checkpoint's CLIP has no text tower ('clip.token_embedding.weight'); "
                                    "retrieval needs it")
    leftover = sorted(k for k in rest if k.startswith("clip."))
    if leftover:
        raise CheckpointImportError(f"clip4clip: CLIP keys that are not an OpenAI-CLIP ViT: {leftover[:10]}")
    sim_header = _sim_header(rest)
    unknown = sorted(k for k in rest if not _known(sim_header, k))
    if unknown:
        raise CheckpointImportError(f"clip4clip: {len(unknown)} unexpected key(s) for a {sim_header} checkpoint: "
                                    f"{unknown[:10]}")
    missing = [k for k in (_CROSS_FIXED if sim_header == "tightTransf" else ())
               if k not in rest] + [f"lstm_visual.{n}" for n in _LSTM if sim_header == "seqLSTM" and
                                    f"lstm_visual.{n}" not in rest]
    if sim_header == "seqTransf" and "frame_position_embeddings.weight" not in rest:
        missing.append("frame_position_embeddings.weight")
    if missing:
        raise CheckpointImportError(f"clip4clip: a {sim_header} checkpoint needs {missing}, which this one lacks")
    tensors, method_options = _map_header(sim_header, rest)
    if "cross_text_chunk" in options:
        method_options["cross_text_chunk"] = int(options["cross_text_chunk"])
    return Conversion(method=NAME, options=method_options, tensors=tensors,
                      num_frames=int(options.get("num_frames") or DEFAULT_FRAMES), tower=tower, consumed=set(state))


register_format(ImportFormat(
    name=NAME,
    help="official CLIP4Clip pytorch_model.bin.<epoch> (CLIP4Clip.state_dict(): clip.* + the sim_header's modules; "
         "meanP / seqLSTM / seqTransf / tightTransf; full form)",
    releases=("pytorch_model.bin.<epoch> as main_task_retrieval.py saves it (the README releases no trained "
              "weights: the checkpoints of your own or others' runs of the official code)",),
    convert=convert_clip4clip,
    source="https://github.com/ArrowLuo/CLIP4Clip",
))
