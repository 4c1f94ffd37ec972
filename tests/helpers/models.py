"""Small models the evaluation tests score with."""

import torch

from flair_core import create_model, get_tokenizer, get_transform, load_model_config


def micro_model(method: str = "flair", image_size: int = 32):
    """An untrained micro-32 `method` model in eval mode, its tokenizer and its eval transform. Seeded, so a
    test's numbers do not depend on what ran before it; `image_size` resizes the vision input (and so its
    patch grid)."""
    config = load_model_config("micro-32")
    vision = config.vision_cfg.model_copy(update={"image_size": image_size})
    config = config.model_copy(update={"vision_cfg": vision})
    torch.manual_seed(0)
    return create_model(config, method).eval(), get_tokenizer(config), get_transform(config, train=False)
