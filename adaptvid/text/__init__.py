"""The CLIP text side: tokenizers, text encoders, class-text classifiers and prompt templates."""
from .classifier import TextClassifier, encode_class_prompts, scaled_cosine
from .encoder import HFClipTextEncoder, OpenClipTextEncoder, TextEncoder, make_text_encoder
from .templates import DEFAULT_TEMPLATES, NAME_ONLY, PHOTO_TEMPLATE, check_templates, read_templates
from .tokenizer import ClipBpeTokenizer, HFTokenizer, Tokens

__all__ = [
    "TextClassifier", "encode_class_prompts", "scaled_cosine",
    "HFClipTextEncoder", "OpenClipTextEncoder", "TextEncoder", "make_text_encoder",
    "DEFAULT_TEMPLATES", "NAME_ONLY", "PHOTO_TEMPLATE", "check_templates", "read_templates",
    "ClipBpeTokenizer", "HFTokenizer", "Tokens",
]
