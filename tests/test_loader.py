"""Training loader: rank/worker splitting, resume, resampling, real caption layouts, bad samples, s3://."""

import io
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from flair_core import get_tokenizer, get_transform, load_model_config
from flair_core.data.captions import SamplingConfig
from flair_core.data.errors import DataError
from flair_core.data.loader import LoaderConfig, TextViews, train_loader
from tests.helpers.processes import free_port

CONFIG = load_model_config("micro-32")
TOKENIZER, TRANSFORM = get_tokenizer(CONFIG), get_transform(CONFIG, train=True)
VIEWS = TextViews(SamplingConfig(k=3, max_sentences=2))


def png(colour=(200, 10, 10), size=40):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder, n_shards, per_shard,
                 record=lambda i: {"sentences": [f"sentence {i}", "another one"]}, extra=()):
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for _ in range(per_shard):
                sink.write({"__key__": f"s{index:05d}", "png": png(), "json": json.dumps(record(index))})
                index += 1
            for sample in extra if s == 0 else ():
                sink.write(sample)
    return f"{folder}/shard-{{000000..{n_shards - 1:06d}}}.tar"


def keys_of(urls, steps, batch=4, views=VIEWS, **kw):
    loader_kw = {k: kw.pop(k) for k in list(kw) if k in LoaderConfig.model_fields}
    config = LoaderConfig(shuffle_buffer=16, min_samples_for_bad_check=8, **loader_kw)
    return [b["keys"] for b in train_loader(urls, views, TOKENIZER, TRANSFORM, batch, steps, config, **kw)]


def test_batches_have_the_training_layout(tmp_path):
    urls = write_shards(tmp_path, 2, 8)
    views = TextViews(SamplingConfig(k=3), long_caption=True)
    batch = next(iter(train_loader(urls, views, TOKENIZER, TRANSFORM, 4, 2, LoaderConfig(workers=0))))
    assert batch["images"].shape == (4, 3, 32, 32)
    assert batch["texts"].shape == (4, 3, 77) and batch["texts"].dtype == torch.long
    assert batch["long_texts"].shape == (4, 77)


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_read_disjoint_shards_and_epochs_have_a_fixed_length(tmp_path, workers):
    urls = write_shards(tmp_path, 4, 8)  # 32 samples
    rank_keys = [keys_of(urls, steps=3, workers=workers, rank=r, world=2) for r in range(2)]
    assert all(len(k) == 3 for k in rank_keys)
    seen = [{k for batch in keys for k in batch} for keys in rank_keys]
    assert not seen[0] & seen[1]


def test_epochs_reshuffle_and_seed_reproduces(tmp_path):
    urls = write_shards(tmp_path, 2, 16)
    first = keys_of(urls, steps=4, workers=2, epoch=0)
    assert keys_of(urls, steps=4, workers=2, epoch=0) == first
    assert keys_of(urls, steps=4, workers=2, epoch=1) != first


@pytest.mark.parametrize("skip", [1, 2, 3])
def test_resume_mid_epoch_yields_the_remaining_batches(tmp_path, skip):
    urls = write_shards(tmp_path, 2, 16)
    full = keys_of(urls, steps=6, workers=2)
    assert keys_of(urls, steps=6, workers=2, skip_batches=skip) == full[skip:]


def test_resampled_mode_draws_shards_with_replacement(tmp_path):
    urls = write_shards(tmp_path, 2, 4)
    keys = keys_of(urls, steps=6, workers=0, resampled=True)  # 24 samples from 8: repeats
    flat = [k for batch in keys for k in batch]
    assert len(flat) == 24 and len(set(flat)) <= 8


def test_dreamlip_and_pixelprose_records_train_without_conversion(tmp_path):
    dreamlip = write_shards(tmp_path / "dl", 1, 4, record=lambda i: {
        "raw_caption": ["alt text"], "shortIB_captions": ["short one"],
        "longIB_captions": ["long a", "long b"],
        "shortSV_captions": [], "longSV_captions": "split. on the fly", "url": "http://x", "key": str(i)})
    pixelprose = write_shards(tmp_path / "pp", 1, 4, record=lambda i: {"caption": "First. Second</s>Third"})
    for urls in (dreamlip, pixelprose):
        assert len(keys_of(urls, steps=1, workers=0)) == 1


def bad_samples():
    return [
        {"__key__": "no-image", "json": json.dumps({"sentences": ["x"]})},
        {"__key__": "bad-json", "png": png(), "json": b"{not json"},
        {"__key__": "empty-caption", "png": png(), "json": json.dumps({"caption": " . "})},
        {"__key__": "broken-image", "png": b"\x89PNG garbage", "json": json.dumps({"sentences": ["x"]})},
    ]


def test_bad_samples_are_skipped_counted_and_logged(tmp_path, caplog):
    urls = write_shards(tmp_path, 1, 12, extra=bad_samples())
    with caplog.at_level(logging.WARNING, logger="flair_core.data.loader"):
        keys = keys_of(urls, steps=3, workers=0, max_bad_fraction=0.5)
    flat = {k for batch in keys for k in batch}
    assert len(keys) == 3 and flat <= {f"s{i:05d}" for i in range(12)}
    logged = caplog.text
    for key in ("no-image", "bad-json", "empty-caption", "broken-image"):
        assert f"skipped sample {key} in {tmp_path}/shard-000000.tar" in logged


def test_truncated_shard_is_skipped(tmp_path, caplog):
    write_shards(tmp_path, 2, 8)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with caplog.at_level(logging.WARNING, logger="flair_core.data.loader"):
        keys = keys_of(f"{tmp_path}/shard-{{000000..000001}}.tar", steps=3, workers=0, max_bad_fraction=0.5)
    assert len(keys) == 3
    assert "shard-000001.tar" in caplog.text


def test_too_many_bad_samples_stop_with_one_line(tmp_path):
    urls = write_shards(tmp_path, 1, 4, extra=bad_samples() * 3)
    with pytest.raises(DataError, match=r"\d+ of \d+ samples unreadable \(more than max_bad_fraction 0.1\)"):
        keys_of(urls, steps=3, workers=0, max_bad_fraction=0.1)


def test_nothing_readable_stops(tmp_path):
    urls = write_shards(tmp_path, 1, 0, extra=bad_samples() * 3)
    with pytest.raises(DataError, match="no readable sample"):
        keys_of(urls, steps=1, workers=0, max_bad_fraction=1.0)


def test_error_in_a_worker_keeps_its_type_and_no_worker_is_left_running(tmp_path):
    """Worker 0 reads only bad samples, worker 1 an empty shard: once, worker 1 read that shard round and
    round for ever, ignoring DataLoader's stop, and outlived the test run at 70 % of a core."""
    urls = write_shards(tmp_path, 2, 0, extra=bad_samples() * 3)
    with pytest.raises(DataError):
        keys_of(urls, steps=1, workers=2, max_bad_fraction=1.0, world=1)
    workers = multiprocessing.active_children()  # idle until the failed loader's iterator is collected
    before = [cpu_seconds(w.pid) for w in workers]
    time.sleep(2)
    spent = [cpu_seconds(w.pid) - b for w, b in zip(workers, before, strict=True)]
    assert all(s < 0.5 for s in spent), spent  # none spinning


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_shards_without_a_sample_stop_the_reader(tmp_path):
    urls = write_shards(tmp_path, 1, 0)
    with pytest.raises(DataError, match="no sample in a pass over 1 shard"):
        keys_of(urls, steps=1, workers=0)
    with pytest.raises(DataError, match="no sample in a pass over 1 shard"):
        keys_of(urls, steps=1, workers=0, resampled=True)


def test_too_few_shards_for_the_readers(tmp_path):
    urls = write_shards(tmp_path, 1, 4)
    with pytest.raises(DataError, match="1 shards cannot feed 2 readers"):
        keys_of(urls, steps=1, workers=0, world=2, rank=1)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A real S3 API (moto's server) on 127.0.0.1, with the environment pointing boto3 at it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(10)


@pytest.mark.integration
def test_shards_round_trip_through_s3(tmp_path, s3_endpoint):
    import boto3

    from flair_core.data.storage import upload_folder

    write_shards(tmp_path / "local", 2, 8)
    boto3.session.Session().client("s3").create_bucket(Bucket="data")  # the default session caches keys
    uploaded = upload_folder(tmp_path / "local", "s3://data/builtin/train")
    assert uploaded == [f"s3://data/builtin/train/shard-00000{i}.tar" for i in range(2)]
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint
    local = keys_of(f"{tmp_path}/local/shard-{{000000..000001}}.tar", steps=3, workers=2)
    remote = keys_of("s3://data/builtin/train/shard-{000000..000001}.tar", steps=3, workers=2)
    assert remote == local


def test_a_samples_crop_is_the_one_torch_manual_seed_gives(tmp_path):
    """The decoder seeds only the CPU generator per sample (fast); the crop equals the one after a full
    torch.manual_seed with the same per-sample seed, so runs and resumes crop as before."""
    from flair_core.data.captions import sample_rng
    from flair_core.data.loader import BadSampleTracker, SampleDecoder

    noisy = Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy())
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    sample = {"__key__": "s00001", "png": buffer.getvalue(), "json": json.dumps({"sentences": ["a", "b"]})}
    decoder = SampleDecoder(VIEWS, TOKENIZER, TRANSFORM, seed=3, epoch=1,
                            tracker=BadSampleTracker(LoaderConfig()))
    image = decoder.decode(sample)["image"]
    rng = sample_rng(3, 1, "s00001")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.getrandbits(63))
        expected = TRANSFORM(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
    torch.testing.assert_close(image, expected, rtol=0, atol=0)
    other = SampleDecoder(VIEWS, TOKENIZER, TRANSFORM, seed=4, epoch=1,
                          tracker=BadSampleTracker(LoaderConfig()))
    assert not torch.equal(other.decode(sample)["image"], image)  # the seed does reach the crop
