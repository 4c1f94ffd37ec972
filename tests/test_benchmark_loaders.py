"""Retrieval benchmark loaders: real annotation excerpts (COCO, Flickr30k val, Urban-1K, IIW, DCI splits) and
generated files in the documented formats (DOCCI, COCO-Karpathy, Flickr test, ShareGPT4V, DCI per-image
files). Images are tiny stand-in JPEGs written at every expected path."""

import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from flair_core.data.benchmarks import RetrievalSet
from flair_core.data.errors import DataError
from flair_core.data.files import image_from_bytes, image_problem
from flair_core.data.registry import BENCHMARKS, benchmark_names, get_benchmark, load_benchmark
from tests.helpers.hostile_images import declaring, hostile, png


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def real(shared_dir) -> Path:
    return shared_dir / "benchmarks" / "annotations"


def write_images(paths, jpeg):
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def first_appearance(ids):
    return tuple(dict.fromkeys(ids))


def error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_benchmark(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def check_ground_truth(ds: RetrievalSet, records, id_key="image_id"):
    """Every text maps to the image whose id its record carries, and image_texts is the inverse map."""
    assert len(ds.texts) == len(records)
    for t, rec in enumerate(records):
        assert ds.image_ids[ds.text_image[t]] == rec[id_key]
    inverse = ds.image_texts()
    assert sorted(t for ts in inverse for t in ts) == list(range(len(ds.texts)))
    assert all(ds.text_image[t] == k for k, ts in enumerate(inverse) for t in ts)
    assert ds.text_positives is None


def text_index(ds, caption):
    return ds.texts.index(caption)


# ---------------------------------------------------------------- COCO (real captions_val2017 excerpt)


@pytest.fixture
def coco_root(tmp_path, real, jpeg):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(real / "coco" / "annotations" / "captions_val2017.json", root / "annotations")
    data = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    write_images([root / "images" / "val2017" / im["file_name"] for im in data["images"]], jpeg)
    return root, data


def test_coco_real_excerpt(coco_root):
    root, data = coco_root
    ds = load_benchmark("coco", root)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    anns = data["annotations"]
    assert ds.name == "coco"
    assert ds.texts == tuple(a["caption"] for a in anns)
    assert ds.image_ids == first_appearance(a["image_id"] for a in anns)
    assert len(ds.image_paths) == len({a["image_id"] for a in anns}) == 25 and len(ds.texts) == 125
    assert ds.image_paths == tuple(root / "images" / "val2017" / files[i] for i in ds.image_ids)
    check_ground_truth(ds, anns)
    # first-appearance order is over the annotations, not the 'images' list
    assert ds.image_ids[0] == 331352 != data["images"][0]["id"]
    t = text_index(ds, "A small closed toilet in a cramped space.")  # annotation id 441
    assert ds.image_ids[ds.text_image[t]] == 331352
    assert ds.image_paths[ds.text_image[t]].name == "000000331352.jpg"
    assert [len(ts) for ts in ds.image_texts()] == [5] * 25


def test_coco_ground_truth_follows_ids_not_positions(coco_root):
    root, data = coco_root
    data["annotations"].reverse()
    data["images"].reverse()
    write_json(root / "annotations" / "captions_val2017.json", data)
    ds = load_benchmark("coco", root)
    check_ground_truth(ds, data["annotations"])
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for t, a in enumerate(data["annotations"]):
        assert ds.image_paths[ds.text_image[t]].name == files[a["image_id"]]


def test_coco_unknown_image_id_and_bad_records(coco_root):
    root, data = coco_root
    path = root / "annotations" / "captions_val2017.json"
    data["annotations"][7]["image_id"] = 123
    write_json(path, data)
    msg = error("coco", root)
    assert str(path) in msg and "record 7" in msg and "123" in msg
    data["annotations"][7]["image_id"] = data["images"][0]["id"]
    del data["annotations"][3]["caption"]
    write_json(path, data)
    msg = error("coco", root)
    assert str(path) in msg and "record 3" in msg and "'caption'" in msg
    data["annotations"][3]["caption"] = None  # the original cannot tokenise it: named
    write_json(path, data)
    msg = error("coco", root)
    assert str(path) in msg and "record 3" in msg and "not a string" in msg


def test_missing_images_fail_before_compute(coco_root):
    root, _ = coco_root
    ds = load_benchmark("coco", root)
    gone = [ds.image_paths[3], ds.image_paths[7]]
    for p in gone:
        p.unlink()
    assert error("coco", root) == f"coco: 2 of 25 images unusable (missing), first: {gone[0]} (missing)"
    unchecked = load_benchmark("coco", root, check_images=False)
    assert unchecked == ds and [p for p in unchecked.image_paths if image_problem(p)] == gone


# ---------------------------------------------------------------- COCO Karpathy 5k (generated)


def test_coco_karpathy_keeps_test_split(tmp_path, jpeg):
    images = [
        {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{i:012d}.jpg",
            "split": split,
            "cocoid": i,
            "sentences": [{"raw": f"caption {j} of {i}."} for j in range(5 + (i == 4))],
        }
        for i, split in enumerate(["train", "test", "val", "test", "test", "restval"])
    ]
    write_json(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    write_images([tmp_path / "val2014" / im["filename"] for im in images if im["split"] == "test"], jpeg)
    ds = load_benchmark("coco_karpathy_5k", tmp_path)
    assert ds.image_ids == (1, 3, 4)
    assert ds.image_paths[2] == tmp_path / "val2014" / "COCO_val2014_000000000004.jpg"
    assert len(ds.texts) == 16 and ds.texts[-1] == "caption 5 of 4."
    assert [len(ts) for ts in ds.image_texts()] == [5, 5, 6]
    images[3]["sentences"][2]["raw"] = 7
    write_json(tmp_path / "dataset_coco.json", {"images": images})
    msg = error("coco_karpathy_5k", tmp_path)
    assert "dataset_coco.json record 3 sentence 2" in msg and "not a string" in msg


# --------------------------------------------------------------- Flickr30k (real val excerpt, generated test)


@pytest.fixture
def flickr_root(tmp_path, real, jpeg):
    root = tmp_path / "flickr30k-images"
    root.mkdir()
    shutil.copy(real / "flickr30k-images" / "flickr30k_val.json", root)
    data = json.loads((root / "flickr30k_val.json").read_text())
    write_images([tmp_path / r["image"] for r in data], jpeg)
    return root, data


@pytest.mark.parametrize("suffix", ["", "/", "//"])
def test_flickr_val_real_excerpt_and_trailing_slash(flickr_root, suffix):
    root, data = flickr_root
    ds = load_benchmark("flickr30k", str(root) + suffix)
    assert len(ds.image_paths) == len(data) == 25 and len(ds.texts) == sum(len(r["caption"]) for r in data)
    assert ds.image_paths == tuple(root.parent / r["image"] for r in data)
    assert all(p.is_file() for p in ds.image_paths)
    records = [{"image_id": Path(r["image"]).stem} for r in data for _ in r["caption"]]
    check_ground_truth(ds, records)
    t = text_index(ds, "A man sleeping in a green room on a couch.")
    assert ds.image_ids[ds.text_image[t]] == "1029450589"
    assert ds.image_paths[ds.text_image[t]] == root / "1029450589.jpg"


def test_flickr_relative_root(flickr_root, monkeypatch):
    root, _ = flickr_root
    monkeypatch.chdir(root)
    assert load_benchmark("flickr30k", ".").image_paths[0] == root / "1018148011.jpg"


def test_flickr_test_split(flickr_root, jpeg):
    root, _ = flickr_root
    records = [
        {"image": f"flickr30k-images/{n}.jpg", "caption": [f"text {n} {j}" for j in range(5)]}
        for n in (11, 22, 33)
    ]
    write_json(root / "flickr30k_test.json", records)
    write_images([root.parent / r["image"] for r in records], jpeg)
    ds = load_benchmark("flickr30k", root, split="test")
    assert ds.image_ids == ("11", "22", "33") and len(ds.texts) == 15 and ds.texts[7] == "text 22 2"
    assert ds.text_image == tuple(k for k in range(3) for _ in range(5))
    msg = error("flickr30k", root, split="testing")
    assert msg == "flickr30k: unknown split 'testing'; known: val, test"


# ---------------------------------------------------------------- Urban-1K and IIW (real excerpts)


def test_urban1k_real_excerpt_captions_verbatim(tmp_path, real, jpeg):
    shutil.copytree(real / "Urban1k" / "annotations", tmp_path / "annotations")
    anns = json.loads((tmp_path / "annotations" / "annotations.json").read_text())["annotations"]
    write_images([tmp_path / "images" / a["image"] for a in anns], jpeg)
    ds = load_benchmark("urban1k", tmp_path)
    assert ds.texts == tuple(a["caption"] for a in anns)  # verbatim, not re-split
    assert ds.image_ids == first_appearance(a["image_id"] for a in anns) and len(ds.image_ids) == 25
    check_ground_truth(ds, anns)
    t = next(i for i, a in enumerate(anns) if a["image"] == "10.jpg")
    assert ds.image_paths[ds.text_image[t]] == tmp_path / "images" / "10.jpg"
    assert '"48 Porte des Lilas"' in ds.texts[t] and ds.image_ids[ds.text_image[t]] == 1


def test_iiw_fine_grained_real_excerpt(tmp_path, real, jpeg):
    shutil.copy(real / "imageinwords" / "test_annotations.json", tmp_path)
    anns = json.loads((tmp_path / "test_annotations.json").read_text())["annotations"]
    write_images([tmp_path / a["image"] for a in anns], jpeg)
    ds = load_benchmark("iiw_fg", tmp_path)
    assert len(ds.texts) == len(anns) == 53
    assert ds.image_ids == first_appearance(a["image_id"] for a in anns)
    assert len(ds.image_ids) == len({a["image_id"] for a in anns}) == 6
    check_ground_truth(ds, anns)
    t = text_index(ds, "The recessed holder is chrome")
    assert ds.image_ids[ds.text_image[t]] == 0
    assert ds.image_paths[ds.text_image[t]] == tmp_path / "docci" / "test_00731.jpg"
    assert {p.parent.name for p in ds.image_paths} <= {"docci", "docci_aar", "dci"}


# ---------------------------------------------------------------- DOCCI fine-grained (generated)


def test_docci_fg_groups_by_image_id(tmp_path, jpeg):
    anns = [
        {"image": f"test_{i:05d}.jpg", "caption": f"detail {n} of image {i}", "image_id": i}
        for n, i in enumerate([5, 5, 2, 5, 9, 2])
    ]
    path = write_json(tmp_path / "annotations" / "test_annotations.json", {"annotations": anns})
    write_images([tmp_path / "images" / a["image"] for a in anns], jpeg)
    ds = load_benchmark("docci_fg", tmp_path)
    assert ds.image_ids == (5, 2, 9) and ds.text_image == (0, 0, 1, 0, 2, 1)
    assert ds.image_texts() == [[0, 1, 3], [2, 5], [4]]
    assert ds.image_paths[1] == tmp_path / "images" / "test_00002.jpg"
    # id 5 now names two files: as the original, the id's first file is used
    anns[3]["image"] = "test_00077.jpg"
    write_json(path, {"annotations": anns})
    assert load_benchmark("docci_fg", tmp_path) == ds


# ---------------------------------------------------------- DCI (real splits.json, generated per-image files)


@pytest.fixture
def dci_root(tmp_path, real, jpeg):
    base = tmp_path / "densely_captioned_images"
    base.mkdir()
    shutil.copy(real / "dci" / "densely_captioned_images" / "splits.json", base)
    splits = json.loads((base / "splits.json").read_text())
    names = splits["train"] + splits["valid"] + splits["test"]
    for name in names:
        stem = name.removesuffix("-data.json")
        write_json(
            base / "annotations" / name,
            {
                "image": f"sa_{stem}.jpg",
                "short_caption": f"A photo of scene {stem}.",
                "extra_caption": "A red car is parked. A tree stands behind it\nSky is blue.</s>  ",
                "mask_data": {},
            },
        )
        write_images([base / "photos" / f"sa_{stem}.jpg"], jpeg)
    return tmp_path, names


def test_dci_concatenates_splits_and_normalises(dci_root):
    root, names = dci_root
    ds = load_benchmark("dci", root)
    assert len(names) == 30 and ds.image_ids == tuple(names)  # train, then valid, then test
    assert ds.text_image == tuple(range(30)) and len(ds.texts) == 30
    assert ds.image_paths[10] == root / "densely_captioned_images" / "photos" / "sa_123538.jpg"
    assert ds.texts[0] == (
        "A photo of scene 112956. A red car is parked. A tree stands behind it. Sky is blue"
    )
    assert load_benchmark("dci", root, split="all") == ds
    assert error("dci", root, split="test") == "dci: unknown split 'test'; known: all"


def test_dci_bad_per_image_files(dci_root):
    root, names = dci_root
    ann = root / "densely_captioned_images" / "annotations" / names[12]
    write_json(ann, {"image": "x.jpg", "short_caption": None, "extra_caption": "\n"})
    msg = error("dci", root)
    assert str(ann) in msg and "record 12" in msg and "short_caption" in msg
    ann.unlink()
    msg = error("dci", root)
    assert str(ann) in msg and "record 12" in msg and "not found" in msg


# ---------------------------------------------------------------- ShareGPT4V (generated)


def share4v_records(n):
    return [
        {
            "id": f"sa_{i}",
            "image": f"sam/images/sa_{i}.jpg" if i % 2 else f"coco/train2017/{i:012d}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in this photo?"},
                {"from": "gpt", "value": f"Photo number {i}.\nIt shows a cat. The cat sleeps."},
            ],
        }
        for i in range(n)
    ]


def test_sharegpt4v_1k(tmp_path, jpeg):
    write_json(tmp_path / "share4v_sam_10k.json", share4v_records(1_005))
    images = [
        tmp_path / "sam" / f"sa_{i}.jpg" if i % 2 else tmp_path / "coco" / "train2017" / f"{i:012d}.jpg"
        for i in range(1_000)
    ]
    write_images(images, jpeg)
    ds = load_benchmark("sharegpt4v_1k", tmp_path)
    # 'sam/images/sa_1.jpg' is read from 'sam/sa_1.jpg'; names without 'images' are untouched
    assert ds.name == "sharegpt4v_1k" and ds.image_paths == tuple(images)
    assert ds.image_ids == tuple(range(1_000)) and ds.text_image == tuple(range(1_000))
    assert ds.texts[3] == "Photo number 3. It shows a cat. The cat sleeps"


def test_sharegpt4v_10k_and_short_file(tmp_path):
    path = write_json(tmp_path / "share4v_sam_10k.json", share4v_records(10_001))
    ds = load_benchmark("sharegpt4v_10k", tmp_path, check_images=False)
    assert len(ds.texts) == len(ds.image_paths) == 10_000 and ds.image_ids[-1] == 9_999
    assert all(image_problem(p) == "missing" for p in ds.image_paths)
    write_json(path, share4v_records(999))
    msg = error("sharegpt4v_1k", tmp_path, check_images=False)
    assert str(path) in msg and "999" in msg
    records = share4v_records(1_000)
    records[42]["conversations"] = records[42]["conversations"][:1]
    write_json(path, records)
    msg = error("sharegpt4v_1k", tmp_path, check_images=False)
    assert f"{path} record 42" in msg and "conversations" in msg


# ---------------------------------------------------------------- generic bad input


def test_unknown_benchmark_lists_known():
    msg = error("imagenet", "/nonexistent")
    assert msg.startswith("unknown benchmark 'imagenet'; known: ")
    assert all(name in msg for name in BENCHMARKS)
    real = [name for name in benchmark_names("retrieval") if BENCHMARKS[name].read is not None]
    assert len(real) == 9


def test_missing_root(tmp_path):
    msg = error("urban1k", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg


@pytest.mark.parametrize(
    "name, rel",
    [
        ("coco", "annotations/captions_val2017.json"),
        ("coco_karpathy_5k", "dataset_coco.json"),
        ("flickr30k", "flickr30k_val.json"),
        ("docci_fg", "annotations/test_annotations.json"),
        ("iiw_fg", "test_annotations.json"),
        ("urban1k", "annotations/annotations.json"),
        ("dci", "densely_captioned_images/splits.json"),
        ("sharegpt4v_1k", "share4v_sam_10k.json"),
    ],
)
def test_missing_and_malformed_annotation_files(tmp_path, name, rel):
    msg = error(name, tmp_path)
    assert msg == f"annotation file {tmp_path / rel} not found"
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text('{"annotations": [ {"image": ')
    msg = error(name, tmp_path)
    assert msg.startswith(f"{tmp_path / rel}: malformed JSON")


@pytest.mark.parametrize("field", ["image", "caption", "image_id"])
def test_record_missing_field(tmp_path, field):
    anns = [{"image_id": i, "image": f"{i}.jpg", "caption": f"long caption {i}"} for i in range(4)]
    del anns[2][field]
    path = write_json(tmp_path / "annotations" / "annotations.json", {"annotations": anns})
    assert error("urban1k", tmp_path) == f"{path} record 2 has no '{field}'"


def test_empty_annotation_list(tmp_path):
    path = write_json(tmp_path / "annotations" / "annotations.json", {"annotations": []})
    assert error("urban1k", tmp_path) == f"{path}: no records"


# ---------------------------------------------------------------- real files as they are


def urban1k_root(tmp_path, real, jpeg, edit=None, prefix: bytes = b"") -> tuple[Path, list]:
    anns = json.loads((real / "Urban1k" / "annotations" / "annotations.json").read_text())["annotations"]
    if edit:
        edit(anns)
    path = tmp_path / "annotations" / "annotations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prefix + json.dumps({"annotations": anns}).encode())
    write_images([tmp_path / "images" / a["image"] for a in anns if not Path(a["image"]).is_absolute()
                  and ".." not in a["image"]], jpeg)
    return path, anns


def test_records_the_original_evaluates_load_and_are_counted_in_one_warning(tmp_path, real, jpeg, caplog):
    def oddities(anns):
        anns[3]["caption"] = ""
        anns[4]["caption"] = "   "
        anns[5]["caption"] = "\ufeffA street  with\ttabs. "
        anns.append(dict(anns[6]))  # the same record twice
        anns.append({**anns[7], "image": anns[8]["image"], "caption": "x"})  # id 7 naming another file

    _, _anns = urban1k_root(tmp_path, real, jpeg, oddities, prefix=b"\xef\xbb\xbf")
    ds = load_benchmark("urban1k", tmp_path)
    # every record is a text; images are the unique ids
    assert len(ds.texts) == 27 and len(ds.image_paths) == 25
    # verbatim: the tokenizer cleans
    assert ds.texts[3] == "" and ds.texts[5] == "\ufeffA street  with\ttabs. "
    assert ds.text_image[26] == ds.text_image[7] and ds.text_image[25] == ds.text_image[6]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0] == ("urban1k: 27 texts, 25 images evaluated as the original does, with 2 empty "
                           "captions (evaluated as the empty string); 1 captions with odd whitespace or a "
                           "BOM (kept verbatim); 1 file starts with a BOM; 1 records repeating an earlier "
                           "image id and caption; 1 image ids reused for another file (the first file is "
                           "used)")
    caplog.clear()
    urban1k_root(tmp_path, real, jpeg)
    load_benchmark("urban1k", tmp_path)
    assert not caplog.records  # a clean file: nothing to say


@pytest.mark.parametrize("image", ["/etc/hostname", "../outside.jpg", "sub/../../outside.jpg"])
def test_annotation_paths_that_leave_the_benchmark_root_are_refused(tmp_path, real, jpeg, image):
    def escape(anns):
        anns[2]["image"] = image

    path, _ = urban1k_root(tmp_path, real, jpeg, escape)
    msg = error("urban1k", tmp_path)
    assert msg == f"{path} record 2: path {image!r} leaves the benchmark root {tmp_path / 'images'}"


def test_paths_are_judged_against_each_protocols_root(flickr_root, dci_root):
    root, data = flickr_root  # Flickr names images relative to the root's parent, as the original reads them
    assert load_benchmark("flickr30k", root).image_paths[0] == root.parent / data[0]["image"]
    data[1]["image"] = "../flickr30k.jpg"
    write_json(root / "flickr30k_val.json", data)
    assert "leaves the benchmark root" in error("flickr30k", root)
    dci, _names = dci_root
    splits = dci / "densely_captioned_images" / "splits.json"
    write_json(splits, {"train": ["../../secret.json"], "valid": [], "test": []})
    assert error("dci", dci) == (f"{splits} record 0: path '../../secret.json' leaves the benchmark root "
                                 f"{dci / 'densely_captioned_images' / 'annotations'}")


def test_unusable_images_are_named_before_any_compute(tmp_path, real, jpeg, monkeypatch):
    _path, anns = urban1k_root(tmp_path, real, jpeg)
    images = [tmp_path / "images" / a["image"] for a in anns]
    images[4].write_bytes(b"")
    images[9].write_text("not an image at all")
    msg = error("urban1k", tmp_path)
    assert msg == (f"urban1k: 2 of 25 images unusable (empty file, not an image), first: {images[4]} (empty "
                   "file)")
    images[4].write_bytes(jpeg)
    images[9].write_bytes(jpeg)
    big = io.BytesIO()
    Image.new("RGB", (64, 64)).save(big, format="PNG")
    images[11].write_bytes(big.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 × 64 is more than twice the limit: a "bomb"
    assert error("urban1k", tmp_path).endswith(f"first: {images[11]} (too many pixels (decompression bomb))")


def test_an_image_that_passes_the_header_check_but_does_not_decode_is_named(tmp_path, real, jpeg):
    _, anns = urban1k_root(tmp_path, real, jpeg)
    truncated = tmp_path / "images" / anns[6]["image"]
    png = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(png, format="PNG")
    truncated.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # header intact, pixels cut off
    task = get_benchmark("urban1k").load(tmp_path, None, None)  # the cheap pre-check cannot see it
    with pytest.raises(DataError, match=f"^urban1k: image {truncated} does not decode"):
        list(task.images())


# ---------------------------------------------------------------- untrusted image bytes (an upload)


@pytest.mark.parametrize(("kind", "problem"), [
    ("not an image", "not an image"), ("truncated", "does not decode (image file is truncated"),
    ("empty", "empty file"), ("decompression bomb", "too many pixels (decompression bomb)")])
def test_untrusted_image_bytes_are_refused_with_one_line_naming_them(kind, problem, tmp_path):
    with pytest.raises(DataError) as info:
        image_from_bytes(hostile()[kind], "upload 'x.png'")
    assert str(info.value).startswith(f"upload 'x.png': {problem}") and "\n" not in str(info.value)
    if kind != "truncated":  # the header check is the one image files get
        (tmp_path / "x.png").write_bytes(hostile()[kind])
        assert image_problem(tmp_path / "x.png") == problem


def test_the_pixel_cap_is_judged_from_the_header_before_any_pixel_is_decoded(monkeypatch):
    declared = declaring(png(), 8000, 6000)  # 48 MP claimed over the pixels of 64 x 64: decoding would fail
    with pytest.raises(DataError, match=r"^x: too many pixels \(8000 x 6000\)$"):
        image_from_bytes(declared, "x")
    # 64 x 64 is between PIL's two limits: PIL only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not escape: the cap's one line says it
        with pytest.raises(DataError, match=r"^x: too many pixels \(64 x 64\)$"):
            image_from_bytes(png(), "x", max_pixels=4000)


def test_untrusted_image_bytes_that_are_an_image_come_back_as_rgb():
    palette = io.BytesIO()
    Image.new("P", (5, 3)).save(palette, format="PNG")
    image = image_from_bytes(palette.getvalue(), "x")
    assert (image.mode, image.size) == ("RGB", (5, 3))


def test_the_built_in_benchmarks_are_flagged_as_such_and_the_flow_evaluates_exactly_them():
    from flows.pretrain_eval import BENCHMARKS as FLOW_BENCHMARKS

    assert benchmark_names(builtin=True) == FLOW_BENCHMARKS == [
        "builtin_fine_grained", "builtin_long", "builtin_standard", "builtin_segmentation",
        "builtin_classification"]
    assert "coco" in benchmark_names(builtin=False) and "builtin_long" not in benchmark_names(builtin=False)
    assert benchmark_names("segmentation", builtin=True) == ["builtin_segmentation"]
