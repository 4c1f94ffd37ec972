"""Sentence splitting and sub-caption sampling (FLAIR_SPEC §5.3), against the original's examples."""

import json
import random

import pytest
from pydantic import ValidationError

from flair_core.data.captions import (
    SamplingConfig,
    normalise_long_caption,
    sample_rng,
    sample_sub_captions,
    sentence_pool,
    split_sentences,
)
from flair_core.data.errors import DataError


@pytest.fixture(scope="module")
def examples(reference_fixture):
    return json.loads((reference_fixture / "caption_sampling.json").read_text())


def test_splitter_matches_the_original(examples):
    for case in examples["split_examples"]:
        assert split_sentences(case["input"]) == case["output"]


def test_dreamlip_pool_follows_the_field_order(examples):
    record = examples["dreamlip_caption_dict"]
    expected = [s for field in examples["field_concatenation_order"] for s in record[field]]
    assert sentence_pool(record) == expected


def test_dreamlip_string_fields_are_split_and_pixelprose_caption_read(examples):
    assert sentence_pool({"raw_caption": "a dog. a cat", "longSV_captions": ["x"]}) == ["a dog", "a cat", "x"]
    assert sentence_pool(examples["pixelprose_sample"])[:2] == ["First sentence here", "Second one follows"]


def test_bit_exact_with_the_original_when_its_window_rule_is_kept(examples):
    for case in examples["sampling_cpython_random"]:
        record = examples["pixelprose_sample"] if case["pixelprose"] else examples["dreamlip_caption_dict"]
        config = SamplingConfig(k=case["k"], max_sentences=case["max_merged_num"], include_last_window=False)
        assert (sample_sub_captions(sentence_pool(record), config, random.Random(case["seed"]))
                == case["output"])


def test_fixed_window_rule_reaches_the_last_sentence():
    pool = [f"s{i}" for i in range(5)]
    fixed = SamplingConfig(k=200, max_sentences=2, length_mode="fixed", merge="consecutive")
    original = fixed.model_copy(update={"include_last_window": False})
    assert any(c.endswith("s4") for c in sample_sub_captions(pool, fixed, random.Random(0)))
    assert not any("s4" in c for c in sample_sub_captions(pool, original, random.Random(0)))


def test_length_and_merge_modes():
    pool = [f"s{i}" for i in range(6)]
    rng = random.Random(1)
    fixed = sample_sub_captions(pool, SamplingConfig(k=50, max_sentences=3, length_mode="fixed"), rng)
    assert all(len(c.split(". ")) == 3 for c in fixed)
    windows = sample_sub_captions(pool, SamplingConfig(k=50, max_sentences=3, length_mode="fixed",
                                                       merge="consecutive"), rng)
    for c in windows:
        idx = [int(s[1:]) for s in c.split(". ")]
        assert idx == list(range(idx[0], idx[0] + 3))
    merged = sample_sub_captions(
        pool, SamplingConfig(k=50, max_sentences=3, length_mode="fixed", merge="random"), rng)
    assert all(len(set(c.split(". "))) == 3 for c in merged)  # distinct sentences
    assert any([int(s[1:]) for s in c.split(". ")] != sorted(int(s[1:]) for s in c.split(". "))
               for c in merged)
    lengths = {len(c.split(". "))
               for c in sample_sub_captions(pool, SamplingConfig(k=200, max_sentences=3), rng)}
    assert lengths == {1, 2, 3}


def test_per_sample_rng_is_independent_of_reading_order():
    pool = [f"s{i}" for i in range(8)]
    config = SamplingConfig(k=4)
    a = {key: sample_sub_captions(pool, config, sample_rng(0, 1, key)) for key in ("x", "y", "z")}
    b = {key: sample_sub_captions(pool, config, sample_rng(0, 1, key)) for key in ("z", "x", "y")}
    assert a == b
    other_epoch = [sample_sub_captions(pool, config, sample_rng(0, e, "x")) for e in range(2, 6)]
    assert any(c != a["x"] for c in other_epoch)  # a new epoch draws new sub-captions


def test_long_caption_normalisation():
    assert normalise_long_caption("A dog.\nIt runs. ") == "A dog. It runs"


@pytest.mark.parametrize("record", [{}, {"caption": "  . . "}, {"sentences": []}, {"raw_caption": []}])
def test_empty_or_malformed_records_are_data_errors(record):
    with pytest.raises(DataError):
        sentence_pool(record)


@pytest.mark.parametrize("field,value", [("k", 0), ("max_sentences", 0), ("length_mode", "sometimes")])
def test_invalid_sampling_parameters_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        SamplingConfig(**{field: value})


def test_sentences_true_of_many_images_can_be_left_out_of_the_pool():
    record = {"sentences": ["a red circle", "the background is gray", "three shapes"],
              "sentence_share": [0.01, 0.2, 0.33]}
    assert sentence_pool(record) == record["sentences"]
    assert sentence_pool(record, max_share=0.05) == ["a red circle"]
    assert sentence_pool(record, max_share=0.25) == ["a red circle", "the background is gray"]
    # never empty, and records without shares (other data sets) keep every sentence
    assert sentence_pool({**record, "sentence_share": [0.5, 0.5, 0.5]}, max_share=0.05) == record["sentences"]
    assert sentence_pool({"sentences": record["sentences"]}, max_share=0.05) == record["sentences"]
