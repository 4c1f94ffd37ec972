"""Reading model weights from every form the released FLAIR files and our own checkpoints come in.

Accepted: a bare state dict, `{"state_dict": ...}` or `{"model": ...}` wrappers (training checkpoints with
optimizer state and counters), `module.` (DDP) and `_orig_mod.` (torch.compile) key prefixes, and
`.safetensors` files. Pickles are read with `weights_only=True`, so a file that tries to run code is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

WRAPPER_KEYS = ("state_dict", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and what is wrong."""


def torch_load(path: Path):
    """`torch.load` with `weights_only=True`, its failures as one line of our own: a file that is no torch
    checkpoint at all, a pickle that would build other objects (refused), or a damaged one."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: not a checkpoint (neither a torch zip file nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None
        raise CheckpointError(f"{path}: refused: loading it would build objects other than tensors and plain "
                              "containers, which can run code; only weights are read") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors in `path`, unwrapped and with wrapper prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    else:
        obj = torch_load(path)
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected tensors by name, or a 'state_dict' "
                              "entry)")
    return {_strip_prefixes(k): v for k, v in obj.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def adapt_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fill what older files lack and resize position embeddings to the model's grid/context (as
    open_clip)."""
    state_dict = dict(state_dict)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros(())
    # Only a different grid or context length is resized; another width is another architecture, which the
    # key/shape check then reports.
    if _same_width(state_dict, "visual.positional_embedding", model):
        resize_pos_embed(state_dict, model)
    if _same_width(state_dict, "positional_embedding", model):
        resize_text_pos_embed(state_dict, model)
    return state_dict


def _same_width(state_dict: dict[str, torch.Tensor], key: str, model: nn.Module) -> bool:
    expected = model.state_dict().get(key)
    return key in state_dict and expected is not None and state_dict[key].shape[-1] == expected.shape[-1]


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly; mismatches raise CheckpointError naming the keys."""
    return load_checked(model, read_state_dict(path), str(path))


def load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    state_dict = adapt_state_dict({_strip_prefixes(k): v for k, v in state_dict.items()}, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state_dict[k].shape)}≠{tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:6])}{', …' if len(keys) > 6 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source}: does not match the model — " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    return model
