"""Checkpoint loading: every released form, refusal of code-running pickles, mismatches named."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from flair_core import CheckpointError, create_model, load_weights, read_state_dict


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return create_model("micro-32").eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_forms(model, folder):
    sd = model.state_dict()
    optimizer = torch.optim.AdamW(model.parameters())
    forms = {
        "bare.pt": sd,
        "wrapped.pt": {"epoch": 3, "name": "run", "state_dict": sd, "optimizer": optimizer.state_dict()},
        "ddp.pt": {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "compiled.pt": {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    }
    paths = []
    for name, obj in forms.items():
        torch.save(obj, folder / name)
        paths.append(folder / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    return paths + [folder / "weights.safetensors"]


def test_every_checkpoint_form_loads_to_the_same_weights(source, tmp_path):
    for path in save_forms(source, tmp_path):
        target = load_weights(create_model("micro-32"), path)
        assert same_weights(source, target), path.name


def test_create_model_with_pretrained_is_one_call(source, tmp_path):
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "f.pt")
    assert same_weights(source, create_model("micro-32", pretrained=tmp_path / "f.pt"))


def test_missing_logit_bias_is_filled_with_zero(source, tmp_path):
    sd = {k: v for k, v in source.state_dict().items() if k != "logit_bias"}
    torch.save(sd, tmp_path / "old.pt")
    model = load_weights(create_model("micro-32"), tmp_path / "old.pt")
    assert model.logit_bias.item() == 0.0


def test_position_embeddings_are_resized_to_the_model_grid(source, tmp_path, monkeypatch):
    import json

    torch.save(source.state_dict(), tmp_path / "32px.pt")
    cfg = source.config.model_dump()
    cfg["vision_cfg"]["image_size"] = 64
    (tmp_path / "64px.json").write_text(json.dumps(cfg))
    model = load_weights(create_model(tmp_path / "64px.json"), tmp_path / "32px.pt")
    assert model.visual.positional_embedding.shape == (65, 64)
    assert torch.equal(model.visual.positional_embedding[0], source.visual.positional_embedding[0])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError, match="refused: loading it would build objects") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200 + len(str(path))
    assert "weights_only=False" not in str(err.value)  # no advice to turn the protection off
    assert not marker.exists()


def test_random_bytes_are_not_a_checkpoint_rather_than_a_hostile_pickle(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(7, 256)) * 40)
    with pytest.raises(CheckpointError, match="not a checkpoint \\(neither a torch zip file nor a pickle\\)"):
        read_state_dict(path)


def test_other_architecture_names_the_mismatched_keys(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "micro.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("tiny-64"), tmp_path / "micro.pt")
    message = str(err.value)
    assert "missing (48): transformer.resblocks.2." in message  # tiny-64 has 4+4 layers, micro-32 2+2
    assert "shape" in message and "image_post.proj (64, 32)≠(192, 128)" in message
    assert "\n" not in message


def test_unexpected_keys_are_named(source, tmp_path):
    torch.save({**source.state_dict(), "visual.proj": torch.zeros(64, 32)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): visual.proj"):
        load_weights(create_model("micro-32"), tmp_path / "extra.pt")


@pytest.mark.parametrize("name,content",
                         [("trunc.pt", b"PK\x03\x04garbage"), ("bad.safetensors", b"\x00" * 16)])
def test_corrupt_files_give_one_line(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / name)
    assert "\n" not in str(err.value)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save({"epoch": 3}, tmp_path / "counters.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "counters.pt")
