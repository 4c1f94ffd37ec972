"""The built-in scene data set: determinism, masks agree with captions, hard negatives, exact ground truth."""

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import webdataset as wds

from flair_core.data import builtin
from flair_core.data.builtin import BuiltinDataConfig, generate
from flair_core.data.facts import FactIndex, ObjectFact, RelationFact, fact_from_json
from flair_core.data.scenes import COLOURS, SHAPES, Scene, SceneObject, twin_change
from flair_core.model_config import ConfigError
from flair_core.run_config import load_section

SMALL = BuiltinDataConfig(train_images=40, val_images=20, test_images=60, classification_images=30,
                          shard_size=25)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "builtin"
    generate(SMALL, out)
    return out


def read(folder, split, decode="rgb8"):
    urls = sorted(str(p) for p in (folder / split).glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode(decode))


def test_layout_and_counts(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["counts"] == {"train": 40, "val": 20, "test": 60, "classification": 30}
    assert len(list((dataset / "test").glob("*.tar"))) == 3  # 60 samples, 25 per shard
    assert len(read(dataset, "train")) == 40
    assert {"png", "json", "seg.png", "inst.png"} <= set(read(dataset, "test")[0])


def test_deterministic_by_seed(dataset, tmp_path):
    again = tmp_path / "again"
    generate(SMALL, again)
    for split in ("train", "test", "classification"):
        a, b = read(dataset, split, "l"), read(again, split, "l")
        assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
        assert all(np.array_equal(x["png"], y["png"]) for x, y in zip(a, b, strict=True))
    assert (dataset / "test_queries.json").read_text() == (again / "test_queries.json").read_text()
    other = tmp_path / "other"
    generate(SMALL.model_copy(update={"seed": 1}), other)
    assert read(other, "test")[0]["json"] != read(dataset, "test")[0]["json"]


def test_masks_agree_with_captions(dataset):
    for sample in read(dataset, "test"):
        record, image = sample["json"], sample["png"]
        classes, instances = sample["seg.png"], sample["inst.png"]
        if classes.ndim == 3:
            classes, instances = classes[..., 0], instances[..., 0]
        scene = Scene(tuple(SceneObject(**o) for o in record["scene"]["objects"]),
                      record["scene"]["background"],
                      record["scene"]["background_style"], record["scene"]["grid"])
        stated = {fact_from_json(f) for f in record["facts"]}
        size = image.shape[0]
        for i, obj in enumerate(scene.objects):
            mask = instances == i + 1
            assert mask.sum() >= 4, f"object {i} of {sample['__key__']} is hidden"
            assert (classes[mask] == 1 + SHAPES.index(obj.shape)).all()
            if obj.pattern == "solid":
                assert (image[mask] == COLOURS[obj.colour]).all()
            # the object's pixels sit in the layout cell its stated region is derived from
            ys, xs = np.nonzero(mask)
            cell = size / scene.grid
            assert (int(ys.mean() // cell), int(xs.mean() // cell)) == (obj.row, obj.col)
            fact = ObjectFact(obj.shape, obj.colour, obj.size, obj.pattern, obj.region(scene.grid))
            assert fact in stated
        assert (classes == 0).sum() > 0


def test_long_captions_exceed_the_context(dataset):
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    lengths = [len(tokenizer.encode(s["json"]["caption"])) for s in read(dataset, "test")]
    assert min(lengths) > 77
    counts = [len(s["json"]["scene"]["objects"]) for s in read(dataset, "test")]
    assert min(counts) >= 5 and max(counts) <= 8


def test_evaluation_splits_are_twin_pairs(dataset):
    samples = read(dataset, "test")
    kinds = Counter()
    for base, twin in zip(samples[::2], samples[1::2], strict=True):
        kind = twin["json"]["scene"]["origin"].removeprefix("twin:")
        kinds[kind] += 1
        a, b = base["json"]["scene"]["objects"], twin["json"]["scene"]["objects"]
        diffs = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        if kind == "attribute":
            assert len(diffs) == 1
            assert sum(x[k] != y[k] for k in ("shape", "colour", "size", "pattern") for x, y in diffs) == 1
        elif kind == "swap_colours":
            (x1, y1), (x2, y2) = diffs
            assert (y1["colour"], y2["colour"]) == (x2["colour"], x1["colour"])
        else:
            (x1, y1), (x2, y2) = diffs
            assert ((y1["row"], y1["col"], y2["row"], y2["col"])
                    == (x2["row"], x2["col"], x1["row"], x1["col"]))
    assert set(kinds) == {"attribute", "swap_colours", "swap_positions"}


def brute_force(fact, scene):
    """Independent, object-by-object check of one fact in one scene."""
    objs = scene.objects
    if isinstance(fact, ObjectFact):
        return any(all(v is None or v == (o.region(scene.grid) if k == "region" else getattr(o, k))
                       for k, v in vars(fact).items()) for o in objs)
    if isinstance(fact, RelationFact):
        axis, sign = {"left of": ("col", 1), "right of": ("col", -1), "above": ("row", 1),
                      "below": ("row", -1)}[fact.relation]
        return any(a.colour == fact.colour and a.shape == fact.shape and b.colour == fact.other_colour
                   and b.shape == fact.other_shape and sign * (getattr(b, axis) - getattr(a, axis)) > 0
                   for a in objs for b in objs if a is not b)
    if type(fact).__name__ == "BackgroundFact":
        return scene.background == fact.colour and fact.style in (None, scene.background_style)
    return len(objs) == fact.count


def test_ground_truth_is_the_exact_set_of_satisfying_images():
    scenes = [s for _, s, _ in builtin.split_scenes(SMALL, "test")]
    shares = builtin.FactShares(scenes)
    samples = [builtin.scene_sample(SMALL, "test", k, s, o, shares)
               for k, s, o in builtin.split_scenes(SMALL, "test")]
    extras = [extra for _, extra in samples]
    queries = builtin.build_queries(scenes, extras, SMALL.merged_queries_per_image)
    index = FactIndex(scenes)
    for (sample, extra) in samples[:10]:
        for fact, share in zip(extra["facts"], sample["json"]["sentence_share"], strict=True):
            expected = [i for i, s in enumerate(scenes) if brute_force(fact, s)]
            assert index.positives([fact]).tolist() == expected, fact
            # what training filters on
            assert share == pytest.approx(len(expected) / len(scenes), abs=1e-6), fact
    fine = queries["fine_grained"]
    assert all(src in pos for src, pos in zip(fine["source"], fine["positives"], strict=True))
    assert any(len(p) > 1 for p in fine["positives"])  # a sentence true of its twin too
    assert all(len(p) == 1 for p in queries["long"]["positives"][:20]) or \
        np.mean([len(p) == 1 for p in queries["long"]["positives"]]) > 0.9


def test_query_file_matches_the_images(dataset):
    queries = json.loads((dataset / "test_queries.json").read_text())
    keys = [s["__key__"] for s in read(dataset, "test")]
    assert queries["images"] == keys
    assert set(queries["sets"]) == {"fine_grained", "long", "standard"}
    assert len(queries["sets"]["long"]["texts"]) == len(keys)


def test_each_query_records_its_fact_type_and_each_twin_pair_what_it_changed(dataset):
    queries = json.loads((dataset / "test_queries.json").read_text())
    records = [s["json"] for s in read(dataset, "test")]
    fine = queries["sets"]["fine_grained"]
    for text, source, kind in zip(fine["texts"], fine["source"], fine["fact_type"], strict=True):
        stated = {sentence: fact["type"] for sentence, fact in zip(records[source]["sentences"],
                                                                   records[source]["facts"], strict=True)}
        if text in stated:  # one sentence: the kind of the fact it states
            assert kind == {"ObjectFact": "object", "RelationFact": "relation"}[stated[text]], text
        else:
            assert kind == "merged" and all(part in stated for part in text.split(". ")), text
    assert set(fine["fact_type"]) == {"object", "relation", "merged"}
    assert set(queries["sets"]["long"]["fact_type"]) == {"long_caption"}
    assert set(queries["sets"]["standard"]["fact_type"]) == {"short_caption"}
    assert len(queries["twin_change"]) == len(records) // 2
    for change, base, twin in zip(queries["twin_change"], records[::2], records[1::2], strict=True):
        kind = twin["scene"]["origin"].removeprefix("twin:")
        if kind == "attribute":
            differ = {k for a, b in zip(base["scene"]["objects"], twin["scene"]["objects"], strict=True)
                      for k in a if a[k] != b[k]}
            assert differ == {change}
        else:
            assert change == kind
    assert {"shape", "colour", "swap_colours", "swap_positions"} <= set(queries["twin_change"])


def test_twin_change_names_the_changed_attribute():
    circle = SceneObject("circle", "red", "small", "solid", row=0, col=0)
    square = SceneObject("square", "blue", "large", "striped", row=1, col=1)
    scene = Scene((circle, square), "gray", "plain", grid=2)
    green = Scene((circle, replace(square, colour="green")), "gray", "plain", grid=2)
    assert twin_change(scene, green, "attribute") == "colour"
    assert twin_change(scene, Scene((replace(circle, size="large"), square), "gray", "plain", grid=2),
                       "attribute") == "size"
    assert twin_change(scene, green, "swap_colours") == "swap_colours"


def test_classification_images_cover_every_shape(dataset):
    labels = [int(s["cls"]) for s in read(dataset, "classification")]
    assert set(labels) == set(range(len(SHAPES)))


@pytest.mark.parametrize("override,key", [("val_images=3", "data.val_images"),
                                          ("min_objects=9", "data"), ("grid=2", "data"),
                                          ("image_size=-4", "data.image_size"),
                                          ("colour=red", "data.colour")])
def test_invalid_parameters_name_the_field(override, key):
    with pytest.raises(ConfigError) as err:
        load_section(BuiltinDataConfig, "data", None, [override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_failed_generation_leaves_the_previous_output_intact(dataset, tmp_path, monkeypatch):
    out = tmp_path / "keep"
    generate(SMALL, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real_render = builtin.render

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 50:
            raise RuntimeError("disk full")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(builtin, "render", failing_render)
    with pytest.raises(RuntimeError):
        generate(SMALL, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_region_names_partition_the_grid():
    names = [[SceneObject("circle", "red", "small", "solid", r, c).region(4) for c in range(4)]
             for r in range(4)]
    assert names[0] == ["top left", "top", "top", "top right"]
    assert names[1] == names[2] == ["left", "centre", "centre", "right"]
    assert names[3] == ["bottom left", "bottom", "bottom", "bottom right"]


def test_difficulty_levels_fill_the_layout_and_explicit_settings_win():
    easy = BuiltinDataConfig(level="easy")
    assert (easy.grid, easy.min_objects, easy.max_objects, easy.relations_per_caption) == (3, 2, 4, 1)
    hard = BuiltinDataConfig()
    assert (hard.level, hard.grid, hard.min_objects, hard.max_objects) == ("hard", 4, 5, 8)
    assert BuiltinDataConfig(level="easy", max_objects=3).max_objects == 3
    with pytest.raises(ConfigError, match="data.level"):
        load_section(BuiltinDataConfig, "data", None, ["level=medium"])


def test_prepare_recovers_what_a_killed_writer_left_beside_its_output(tmp_path):
    out = tmp_path / "builtin"
    generate(SMALL, out)
    (tmp_path / ".builtin.partial-dead").mkdir()  # a writer SIGKILLed mid-write
    (tmp_path / ".builtin.partial-dead" / "shard-000000.tar").write_bytes(b"half")
    stale = tmp_path / ".builtin.previous"  # killed after the swap, before removing the old copy
    stale.mkdir()
    generate(SMALL.model_copy(update={"seed": 1}), out)  # before: "Directory not empty"
    assert json.loads((out / "meta.json").read_text())["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin"]

    out.rename(stale)  # killed between the swap's two renames: the complete copy is the `.previous` one
    generate(SMALL, out)
    assert json.loads((out / "meta.json").read_text())["config"]["seed"] == SMALL.seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin"]


def test_a_sigterm_during_prepare_removes_its_partial_folder_and_keeps_the_old_data(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "builtin"
    generate(SMALL, out)
    before = (out / "meta.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "flair_cli", "prepare", "--set", "train_images=20000",
                             "--set", "image_size=32", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(tmp_path.glob(".builtin.partial-*/train/*.tar")):  # writing shards
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == f"flair prepare: stopped by SIGTERM; {out} is as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin"]
    assert (out / "meta.json").read_bytes() == before
