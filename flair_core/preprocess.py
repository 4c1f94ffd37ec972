"""Tokenizer and image transforms: open_clip's, configured for a model config."""

from __future__ import annotations

from collections.abc import Callable

from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform

from flair_core.model_config import ModelConfig


def get_tokenizer(config: ModelConfig) -> SimpleTokenizer:
    """CLIP BPE (vocabulary shipped in the open_clip wheel); over-long texts are cut and end with EOT."""
    return SimpleTokenizer(context_length=config.text_cfg.context_length)


def get_transform(config: ModelConfig, train: bool) -> Callable:
    """open_clip's transforms with OpenAI mean/std: eval = shortest-side bicubic resize + centre crop;
    train = RandomResizedCrop(scale 0.9–1.0), as the original recipe."""
    size = config.vision_cfg.image_size
    aug = {"scale": (0.9, 1.0)} if train else None
    return image_transform(size, is_train=train, resize_mode="shortest", interpolation="bicubic", aug_cfg=aug)
