"""The method registry is the one place a method is defined: a fifth method is its module plus one registry
line, and training, evaluation, the CLI, the flows' tables and the inference API pick it up."""

import json

import pytest
import torch
import yaml
from PIL import Image

from flair_cli import main as flair
from flair_core import (
    METHODS,
    Method,
    create_model,
    load_trained,
    method_of,
    rank_images,
    register,
    score_pairs,
)
from flair_core.evaluation.headline import promotion_metric
from flair_core.evaluation.runner import EvalOptions, run_benchmark
from flair_core.methods import clip
from flair_core.run_config import load_run_config
from flair_core.training.loop import Trainer
from tests.helpers.paths import REPO

TOY = Method("toy", clip.ClipSettings, clip.ClipModel, clip.ClipLoss, summary="a test's toy method")


@pytest.fixture
def toy_method(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", TOY)  # registered for this test only
    return TOY


def test_every_method_names_its_own_mode_first_and_offers_it(tiny_data):
    for method in METHODS.values():
        model = create_model("micro-32", method.name).eval()
        assert method_of(model) is method
        metrics = run_benchmark(model, "builtin_long", tiny_data,
                                options=EvalOptions(modes=(method.primary_mode,)))
        assert promotion_metric(method.primary_mode, "builtin_long") in metrics


def test_a_registered_fifth_method_trains_evaluates_and_is_listed(toy_method, tiny_data, tmp_path, capsys):
    config = load_run_config([str(REPO / "params/cpu.yaml"), str(REPO / "params/pipeline.yaml")], [
        "method.name=toy", f"train.shards={tiny_data / 'train'}", "train.steps_per_epoch=4",
        "train.validate_every=4", "loader.workers=0"])
    Trainer(config, tmp_path / "run").fit()  # validated in its own mode, from the registry
    assert "retrieval/builtin_fine_grained/global/t2i_r1" in json.loads(
        (tmp_path / "run" / "val_metrics.jsonl").read_text().splitlines()[-1])
    model = load_trained(tmp_path / "run")
    assert method_of(model).name == "toy"
    metrics = run_benchmark(model, "builtin_segmentation", tiny_data)
    # its default modes come from the registry
    assert "segmentation/builtin_segmentation/patch/miou" in metrics
    assert flair(["methods", "--names"]) == 0
    assert capsys.readouterr().out.split() == ["flair", "clip", "filip", "dreamlip", "toy"]


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'clip' is already registered"):
        register(Method("clip", clip.ClipSettings, clip.ClipModel, clip.ClipLoss))


def test_a_model_built_without_create_model_says_how_to_build_it():
    config = create_model("micro-32", "clip").config
    with pytest.raises(ValueError, match="build it with flair_core.create_model"):
        method_of(clip.ClipModel(config))


def test_the_dvc_pipeline_trains_registered_methods_only():
    listed = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"][0]["methods"]
    assert set(listed) <= set(METHODS) and listed


def test_inference_scores_pairs_and_ranks_in_the_methods_own_mode():
    torch.manual_seed(0)
    images = [Image.new("RGB", (32, 32), colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    texts = ["a red square.", "a green circle.", "a blue ring."]
    for name in METHODS:
        model = create_model("micro-32", name).eval()
        pairs = score_pairs(model, images, texts)
        order, scores = rank_images(model, texts, images)
        assert pairs.shape == (3,) and order.shape == scores.shape == (3, 3)
        torch.testing.assert_close(pairs, scores.diagonal())  # a pair's score is its cell of the full ranking
        assert torch.equal(scores.gather(1, order), scores.sort(dim=1, descending=True).values)
    with pytest.raises(ValueError, match="as many images as texts"):
        score_pairs(model, images, texts[:2])
