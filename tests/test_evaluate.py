"""`flair evaluate`: every task family through the CLI, real benchmark loaders through the runner, bad
input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from flair_core import create_model, get_tokenizer, get_transform
from flair_core.data.retrieval_sets import RetrievalTask, relevance_matrix
from flair_core.evaluation.metrics import EvaluationError
from flair_core.evaluation.records import load_records, outcomes
from flair_core.evaluation.retrieval import evaluate_retrieval
from flair_core.evaluation.runner import EvalOptions, run_benchmark
from flair_core.run_config import load_run_config
from flair_core.training.loop import Trainer


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """A FLAIR micro-32 run of a few steps: enough to be a real checkpoint."""
    out = tmp_path_factory.mktemp("runs") / "flair"
    overrides = {"train.model": "micro-32", "train.shards": str(tiny_data / "train"), "train.batch_size": 16,
                 "train.steps_per_epoch": 3, "sampling.k": 3, "loader.workers": 0}
    Trainer(load_run_config([], [f"{k}={v}" for k, v in overrides.items()]), out).fit()
    return out


def evaluate(*args):
    return subprocess.run([sys.executable, "-m", "flair_cli", "evaluate", *args], capture_output=True,
                          text=True, check=False)


def test_retrieval_segmentation_and_classification_metrics(trained_run, tiny_data, tmp_path):
    expected = {
        "builtin_fine_grained": ["retrieval/builtin_fine_grained/flair/t2i_r1",
                                 "retrieval/builtin_fine_grained/topk/i2t_r5",
                                 "retrieval/builtin_fine_grained/global/strict_t2i_r1",
                                 "retrieval/builtin_fine_grained/flair/t2i_median_rank"],
        "builtin_segmentation": ["segmentation/builtin_segmentation/patch/miou",
                                 "segmentation/builtin_segmentation/attention/miou"],
        "builtin_classification": ["classification/builtin_classification/zeroshot/top1"],
    }
    # every family in one call (one start-up, one model load): a file each in --out-dir
    result = evaluate(str(trained_run), "--root", str(tiny_data),
                      *(x for b in expected for x in ("--benchmark", b)),
                      "--topk", "8", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for benchmark, keys in expected.items():
        metrics = json.loads((tmp_path / f"{benchmark}.json").read_text())
        for key in keys:
            assert key in metrics and 0 <= metrics[key] <= 100 + 64, (key, metrics.get(key))
    fine = json.loads((tmp_path / "builtin_fine_grained.json").read_text())
    assert fine["retrieval/builtin_fine_grained/num_images"] == 64
    # the diagnostics beside the headline, each with interval and chance, recomputable from the records
    records = load_records(tmp_path / "builtin_fine_grained.queries.npz")
    changes = {f"/{change}" for change in records["pair/change"].tolist()}
    assert changes and changes <= {f"/{c}" for c in ("shape", "colour", "size", "pattern", "swap_colours",
                                                     "swap_positions")}
    modes, kinds = ("flair", "global", "topk"), ("object", "relation", "merged")
    diagnostics = [f"{mode}/t2i_r1/by_fact/{kind}" for mode in modes for kind in kinds]
    diagnostics += [f"{mode}/minimal_pair{change}" for mode in modes for change in ("", *changes)]
    for metric in diagnostics:
        key = f"retrieval/builtin_fine_grained/{metric}"
        assert fine[key + "_ci_low"] <= fine[key] <= fine[key + "_ci_high"], key
        assert fine[key] == pytest.approx(outcomes(records, metric).value()), key
        assert 0 < fine[key + "_chance"] <= 50
    counts = [fine[f"retrieval/builtin_fine_grained/num_texts/by_fact/{kind}"] for kind in kinds]
    assert sum(counts) == fine["retrieval/builtin_fine_grained/num_texts"]
    # counting any satisfying image can only help
    assert (fine["retrieval/builtin_fine_grained/flair/t2i_r5"]
            >= fine["retrieval/builtin_fine_grained/flair/strict_t2i_r5"])
    # one benchmark alone, --out naming its file, scores the same
    single = tmp_path / "alone.json"
    assert evaluate(str(trained_run), "--root", str(tiny_data), "--benchmark", "builtin_fine_grained",
                    "--topk", "8", "--out", str(single)).returncode == 0
    alone = json.loads(single.read_text())
    assert {k: v for k, v in alone.items() if not k.startswith("seconds/")} == {
        k: v for k, v in fine.items() if not k.startswith("seconds/")}
    refused = evaluate(str(trained_run), "--root", str(tiny_data), "--benchmark", "builtin_long",
                       "--benchmark", "builtin_standard", "--out", str(single))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "flair evaluate: error: --out names one file but 2 benchmarks were given: use --out-dir"]


def test_a_real_benchmark_through_the_runner(shared_dir, tmp_path):
    root = tmp_path / "Urban1k"
    (root / "annotations").mkdir(parents=True)
    source = shared_dir / "benchmarks" / "annotations" / "Urban1k" / "annotations" / "annotations.json"
    shutil.copy(source, root / "annotations" / "annotations.json")
    records = json.loads(source.read_text())["annotations"]
    (root / "images").mkdir()
    for record in records:
        Image.new("RGB", (40, 30), (record["image_id"] * 7 % 255, 90, 20)).save(
            root / "images" / record["image"])
    model = create_model("micro-32").eval()
    metrics = run_benchmark(model, "urban1k", root, options=EvalOptions(modes=("flair",)))
    assert metrics["retrieval/urban1k/num_images"] == len({r["image_id"] for r in records})
    assert metrics["retrieval/urban1k/num_texts"] == len(records)
    assert "retrieval/urban1k/flair/t2i_r1" in metrics


def test_a_whole_urban1k_file_with_an_empty_caption_evaluates_all_1000_pairs(trained_run, shared_dir,
                                                                             tmp_path):
    """The released file's layout at its full size, with what the whole file holds and the excerpt does not:
    an empty caption (the original tokenises it) and a BOM. All 1,000 pairs are evaluated; the oddities are
    counted in one warning line."""
    excerpt = json.loads((shared_dir / "benchmarks" / "annotations" / "Urban1k" / "annotations" /
                          "annotations.json").read_text())["annotations"]
    records = [{**excerpt[i % len(excerpt)], "image_id": i, "image": f"{i + 1}.jpg"} for i in range(1000)]
    records[417]["caption"] = ""
    root = tmp_path / "Urban1k"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotations.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"annotations": records}).encode())
    (root / "images").mkdir()
    for record in records:
        Image.new("RGB", (24, 16), (record["image_id"] % 255, 90, 20)).save(root / "images" / record["image"])
    out = tmp_path / "urban1k.json"
    result = evaluate(str(trained_run), "--root", str(root), "--benchmark", "urban1k", "--mode", "global",
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["retrieval/urban1k/num_images"] == metrics["retrieval/urban1k/num_texts"] == 1000
    warning = next(line for line in result.stderr.splitlines() if "as the original does" in line)
    assert "1000 texts, 1000 images" in warning and "1 empty captions" in warning and "BOM" in warning


@pytest.mark.parametrize("args,message", [
    (["--benchmark", "cocoa"], "unknown benchmark 'cocoa'"),
    (["--benchmark", "builtin_long", "--mode", "filip"], "mode 'filip' is not available for flair"),
    (["--benchmark", "builtin_long", "--mode", "topk", "--topk", "1000"],
     "top-k 1000 is larger than the gallery"),
    (["--benchmark", "builtin_long", "--split", "dev"], "dev_queries.json not found"),
])
def test_bad_evaluation_input_is_one_line(trained_run, tiny_data, args, message):
    result = evaluate(str(trained_run), "--root", str(tiny_data), *args)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_missing_root_and_mismatched_weights(trained_run, tmp_path):
    result = evaluate(str(trained_run), "--root", str(tmp_path / "nowhere"), "--benchmark", "builtin_long")
    assert result.returncode == 2 and "does not exist" in result.stderr
    torch.save(create_model("micro-32").state_dict(), tmp_path / "w.pt")
    result = evaluate(str(tmp_path / "w.pt"), "--model", "tiny-64", "--root", str(tmp_path), "--benchmark",
                      "builtin_long")
    assert result.returncode == 2 and "does not match the model" in result.stderr


def toy_task(n: int = 4) -> RetrievalTask:
    """n flat-coloured images, one caption each: a retrieval task without any files."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)][:n]
    return RetrievalTask("toy", [f"a colour {i}" for i in range(n)],
                         relevance_matrix(n, [[i] for i in range(n)]),
                         None, lambda: (Image.new("RGB", (32, 32), c) for c in colours), n, torch.arange(n),
                         torch.arange(n))


def test_retrieval_metrics_come_with_interval_and_chance():
    model = create_model("micro-32", "flair").eval()
    metrics, records = evaluate_retrieval(model, get_tokenizer(model.config),
                                          get_transform(model.config, False),
                                          toy_task(), modes=("global", "topk"), topk=2)
    for mode in ("global", "topk"):
        prefix = f"retrieval/toy/{mode}"
        assert metrics[f"{prefix}/t2i_r1_chance"] == pytest.approx(25.0)  # one image in four
        assert metrics[f"{prefix}/i2t_r5_chance"] == 100.0  # five picks from four texts
        assert metrics[f"{prefix}/t2i_mean_rank_chance"] == pytest.approx(2.5)
        low, high = metrics[f"{prefix}/i2t_r1_ci_low"], metrics[f"{prefix}/i2t_r1_ci_high"]
        assert low <= metrics[f"{prefix}/i2t_r1"] <= high
        hits = records[f"{mode}/i2t/rank"] < 1  # the records give back every recall
        assert 100 * hits.mean() == pytest.approx(metrics[f"{prefix}/i2t_r1"])
    assert records["t2i/query"].tolist() == [0, 1, 2, 3] and records["t2i/cluster"].tolist() == [0, 1, 2, 3]


def test_nan_weights_are_an_error_naming_benchmark_mode_and_count():
    model = create_model("micro-32", "flair").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(EvaluationError) as caught:  # before, every query ranked first: R@1 = 100
        evaluate_retrieval(model, get_tokenizer(model.config), get_transform(model.config, False),
                           toy_task(), modes=("flair",))
    message = str(caught.value)
    assert message.startswith("toy, flair mode: 16 of 16 scores are not finite") and "\n" not in message


def test_nan_weights_fail_segmentation_and_classification_instead_of_scoring():
    """NaN wins every arg-max, so without the guard a broken model would get a (meaningless) mIoU and
    top-1."""
    import numpy as np

    from flair_core.data.classification_sets import ClassificationSource
    from flair_core.data.segmentation_sets import SegmentationSource
    from flair_core.evaluation.classification import evaluate_classification
    from flair_core.evaluation.segmentation import evaluate_segmentation

    model = create_model("micro-32", "flair").eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    tokenizer, transform = get_tokenizer(model.config), get_transform(model.config, False)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    segmentation = SegmentationSource("toy_seg", ("background", "square"),
                                      lambda: iter([(image, np.zeros((32, 32), np.int64))]), 1)
    with pytest.raises(EvaluationError, match=r"^toy_seg, patch mode: \d+ of \d+ scores are not finite"):
        evaluate_segmentation(model, tokenizer, transform, segmentation, templates="single")
    classification = ClassificationSource("toy_cls", ("red", "blue"), lambda: iter([(image, 0)]), 1)
    with pytest.raises(EvaluationError, match=r"^toy_cls, zeroshot mode: 2 of 2 scores are not finite"):
        evaluate_classification(model, tokenizer, transform, classification, templates="single")


def test_a_metric_that_is_not_a_number_is_never_reported(tiny_data, monkeypatch):
    from flair_core.evaluation import runner

    def broken(model, benchmark, source, tokenizer, transform, options):
        return runner.Evaluation({f"retrieval/{benchmark}/global/t2i_r1": 12.5,
                                  f"retrieval/{benchmark}/global/t2i_r5": float("inf")}, {})

    monkeypatch.setitem(runner.EVALUATORS, "retrieval", broken)
    with pytest.raises(EvaluationError, match=r"^builtin_long: 1 metrics are not finite, first: "
                                              r"retrieval/builtin_long/global/t2i_r5 = inf$"):
        run_benchmark(create_model("micro-32", "clip"), "builtin_long", tiny_data, "test")


def test_segmentation_and_classification_records_reproduce_their_metrics(tiny_data):
    """Per-image pixel counts and hits sum back to the reported mIoU and top-1; each has its interval and
    reference levels."""
    from flair_core.evaluation.records import outcomes
    from flair_core.evaluation.runner import evaluate_benchmark

    model = create_model("micro-32", "flair").eval()
    segmentation = evaluate_benchmark(model, "builtin_segmentation", tiny_data, "test")
    for mode in ("patch", "attention"):
        key = f"segmentation/builtin_segmentation/{mode}/miou"
        metrics = segmentation.metrics
        assert outcomes(segmentation.records, f"{mode}/miou").value() == pytest.approx(metrics[key])
        assert metrics[key + "_ci_low"] <= metrics[key] <= metrics[key + "_ci_high"]
        assert 0 < metrics[key + "_chance"] < metrics[key + "_majority"]
    classification = evaluate_benchmark(model, "builtin_classification", tiny_data)
    key = "classification/builtin_classification/zeroshot/top1"
    metrics, labels = classification.metrics, classification.records["label"]
    assert outcomes(classification.records, "zeroshot/top1").value() == pytest.approx(metrics[key])
    assert metrics[key + "_majority"] == pytest.approx(100 * np.bincount(labels).max() / len(labels))
