"""The training loop: every method learns, gradient accumulation is exact, bad input is refused cleanly."""

import json
import subprocess
import sys

import pytest
import torch

from flair_core.evaluation.records import load_records
from flair_core.run_config import load_run_config, read_run_config
from flair_core.training.loop import Trainer
from tests.helpers.paths import REPO

METHODS = ["flair", "clip", "filip", "dreamlip"]


def run_config(data, **overrides):
    base = {"train.model": "micro-32", "train.shards": str(data / "train"), "train.batch_size": 16,
            "train.warmup_steps": 2, "train.lr": 2e-3, "train.scalar_lr": 2e-2, "train.weight_decay": 0.1,
            "sampling.k": 3, "loader.workers": 1, "train.checkpoint_every": 1000}
    base.update(overrides)
    return load_run_config([], [f"{k}={v}" for k, v in base.items()])


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_for_every_method(method, tiny_data, tmp_path):
    config = run_config(tiny_data, **{"method.name": method, "train.steps_per_epoch": 30})
    Trainer(config, tmp_path / "run").fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 31))
    first = sum(x["loss/total"] for x in lines[:5]) / 5
    last = sum(x["loss/total"] for x in lines[-5:]) / 5
    assert last < 0.95 * first, (method, first, last)
    assert (tmp_path / "run" / "checkpoints" / "step-00000030.pt").is_file()
    assert read_run_config(tmp_path / "run") == config


@pytest.mark.parametrize("method", METHODS)
def test_gradient_accumulation_equals_the_full_batch(method, tiny_data, tmp_path):
    grads = []
    for accum in (1, 4):
        config = run_config(tiny_data, **{"method.name": method, "train.accum_freq": accum,
                                          "train.steps_per_epoch": 1})
        trainer = Trainer(config, tmp_path / f"a{accum}")
        batch = next(iter(trainer_loader(trainer)))
        terms = trainer.accumulate_gradients(batch)
        grads.append(({k: v.item() for k, v in terms.items()},
                      {n: p.grad.clone() for n, p in trainer.head.named_parameters() if p.grad is not None}))
    (terms1, g1), (terms4, g4) = grads
    assert terms1 == pytest.approx(terms4, rel=1e-5)
    assert g1.keys() == g4.keys()
    for name in g1:
        error = (g1[name] - g4[name]).abs().max().item()
        assert error <= 1e-4 * g1[name].abs().max().item() + 1e-7, (name, error)


def trainer_loader(trainer):
    from flair_core import get_tokenizer, get_transform
    from flair_core.data.loader import train_loader
    from flair_core.training.loop import shard_urls

    t = trainer.config.train
    return train_loader(shard_urls(t.shards), trainer.views, get_tokenizer(trainer.head.config),
                        get_transform(trainer.head.config, True), t.batch_size, 1, trainer.config.loader)


def test_logit_scale_is_clamped_and_scalars_have_their_own_group(tiny_data, tmp_path):
    config = run_config(tiny_data, **{"train.steps_per_epoch": 3, "train.scalar_lr": 5.0})
    trainer = Trainer(config, tmp_path / "run")
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["scalars"]["weight_decay"] == 0 and groups["scalars"]["initial_lr"] == 5.0
    assert {id(p) for p in groups["scalars"]["params"]} == {id(trainer.head.logit_scale),
                                                            id(trainer.head.logit_bias)}
    trainer.fit()
    assert 0 <= trainer.head.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6


def flair(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flair_cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd)


def common(data):
    return ["--set", "train.model=micro-32", "--set", f"train.shards={data / 'train'}", "--set",
            "train.batch_size=8", "--set", "train.steps_per_epoch=2", "--set", "loader.workers=0"]


def test_resume_refuses_changed_settings_and_records_the_safe_ones_as_a_revision(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert flair("train", "--out", str(run), *common(tiny_data)).returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changed = flair("train", "--out", str(run), *common(tiny_data), "--set", "train.lr=0.25", "--set",
                    "sampling.k=2", "--resume", "auto")
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "would change settings the run trained with (sampling.k 8 -> 2, train.lr" in changed.stderr
    assert "-> 0.25)" in changed.stderr and "train.epochs" in changed.stderr  # what may change, named
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config.yaml still says what the run trained with

    longer = flair("train", "--out", str(run), *common(tiny_data), "--set", "train.epochs=2", "--set",
                   "train.log_every=2", "--resume", "auto")
    assert longer.returncode == 0, longer.stderr
    assert read_run_config(run).train.epochs == 2
    revision = json.loads((run / "config_history.jsonl").read_text())
    assert revision["step"] == 2
    assert revision["changed"] == {"train.epochs": [1, 2], "train.log_every": [10, 2]}


def start_holding(command: list[str], run) -> subprocess.Popen:
    """`flair train` started and waited for until it holds the run folder's lock."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "flair_cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while f"pid {proc.pid} " not in holder(run):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc


def holder(run) -> str:
    try:
        return (run / ".lock").read_text()
    except FileNotFoundError:  # not taken yet, or released
        return ""


@pytest.mark.parametrize("load", ["idle", "loaded"])
def test_two_writers_racing_for_one_run_folder_one_trains_and_the_other_is_refused(tiny_data, tmp_path, load):
    """Two `--resume auto` on one --out (a flow's retry while a stale worker still runs): the second is
    refused at once with one line naming the first, whose run ends whole; idle and beside two CPU burners."""
    import signal

    from tests.helpers.processes import cpu_burners

    run, steps = tmp_path / "run", 12
    command = ["train", "--out", str(run), *common(tiny_data), "--set", f"train.steps_per_epoch={steps}",
               "--set", "train.checkpoint_every=4", "--resume", "auto"]
    with cpu_burners(2 if load == "loaded" else 0):
        first = start_holding(command, run)
        first.send_signal(signal.SIGSTOP)  # however fast the machine, the first still holds the folder
        try:
            second = flair(*command)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=600) == 0, first.stderr.read()
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"is being written by flair train (pid {first.pid} on " in second.stderr
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # one writer: no interleaved or repeated steps
    assert read_run_config(run).train.steps_per_epoch == steps
    again = flair(*command)  # the holder is gone: the folder is free again (nothing left to train)
    assert again.returncode == 0, again.stderr


def test_a_lock_left_by_a_killed_trainer_does_not_block_the_next(tiny_data, tmp_path):
    """The OS drops the lock with its holder: the run of a SIGKILLed trainer resumes at once, with no stale
    lock to clear by hand."""
    import signal

    run, steps = tmp_path / "run", 6
    command = ["train", "--out", str(run), *common(tiny_data), "--set", f"train.steps_per_epoch={steps}",
               "--resume", "auto"]
    first = start_holding(command, run)
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed = flair(*command)
    assert resumed.returncode == 0, resumed.stderr
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))


@pytest.mark.parametrize("override,message", [
    ("method.name=siglip", "unknown method 'siglip'"),
    ("sampling.k=0", "sampling.k"),
    ("train.accum_freq=3", "batch_size 8 is not divisible by accum_freq 3"),
    ("method.settings.tcs_weight=2", "method.settings.tcs_weight"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=inf", "train.lr: Input should be a finite number"),
    ("train.weight_decay=nan", "train.weight_decay: Input should be a finite number"),
    ("method.settings.tcs_weight=-inf", "method.settings.tcs_weight"),
])
def test_bad_parameters_give_one_line_and_write_nothing(override, message, tiny_data, tmp_path):
    result = flair("train", "--out", str(tmp_path / "run"), *common(tiny_data), "--set", override)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_params_errors_name_their_real_source(tmp_path):
    from flair_core.model_config import ConfigError

    cpu = REPO / "params" / "cpu.yaml"
    with pytest.raises(ConfigError) as err:  # the file is fine: the override is to blame
        load_run_config([cpu], ["train.lr=inf"])
    assert str(err.value) == "--set train.lr=inf: train.lr: Input should be a finite number"
    with pytest.raises(ConfigError, match=r"^--set method.settings.tcs_weight=3: method.settings.tcs_weight"):
        load_run_config([cpu], ["method.settings.tcs_weight=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=f"^{bad}: train.lr: Input should be greater than 0"):
        load_run_config([bad])
    bad.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not UTF-8 text \\(byte 0xff at offset 13\\)$"):
        load_run_config([bad])
    with pytest.raises(ConfigError, match=f"^params file {tmp_path} is a folder, not a file$"):
        load_run_config([tmp_path])


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder_and_can_simply_be_rerun(
        tiny_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad-000000.tar").write_bytes(bytes(range(256)) * 20)  # not a tar: no sample in a pass
    run = tmp_path / "run"
    failed = flair("train", "--out", str(run), *common(tiny_data), "--set", f"train.shards={bad}")
    assert failed.returncode == 2 and "no sample in a pass" in failed.stderr, failed.stderr
    assert not run.exists()  # nothing to resume, nothing left to block a plain re-run
    again = flair("train", "--out", str(run), *common(tiny_data))
    assert again.returncode == 0, again.stderr
    # In a folder that held files of its own, only what the run wrote goes.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    failed = flair("train", "--out", str(mine), *common(tiny_data), "--set", f"train.shards={bad}")
    assert failed.returncode == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_corrupt_newest_checkpoint_is_skipped_with_its_reason_by_resume_and_evaluate(tiny_data, tmp_path):
    run = tmp_path / "run"
    steps = ["--set", "train.checkpoint_every=4", "--set", "train.keep_checkpoints=2", "--set",
             "train.steps_per_epoch=4"]
    first = flair("train", "--out", str(run), *common(tiny_data), *steps, "--set", "train.epochs=2")
    assert first.returncode == 0, first.stderr
    newest = run / "checkpoints" / "step-00000008.pt"
    assert (run / "checkpoints" / "step-00000008.pt.sha256").read_text().split()[1] == newest.name
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch alone would load it
    newest.write_bytes(bytes(data))

    evaluated = flair("evaluate", str(run), "--root", str(tiny_data), "--benchmark", "builtin_fine_grained",
                      "--topk", "10")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"skipped a checkpoint: {newest}: checksum mismatch" in evaluated.stderr

    resumed = flair("train", "--out", str(run), *common(tiny_data), *steps, "--set", "train.epochs=3",
                    "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped a checkpoint --resume auto cannot use: {newest}: checksum mismatch" in resumed.stderr
    assert "resumed from" in resumed.stderr and "step-00000004.pt at step 4" in resumed.stderr
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))  # steps 5-8 again, once each

    for path in (run / "checkpoints").glob("step-*.pt"):
        path.write_bytes(b"garbage")
    refused = flair("train", "--out", str(run), *common(tiny_data), *steps, "--set", "train.epochs=4",
                    "--resume", "auto")
    assert refused.returncode == 2 and "no readable checkpoint (2 skipped" in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("flair train: error:")


def test_a_run_whose_recorded_config_is_unreadable_is_refused_in_one_line_and_the_folder_freed(tiny_data,
                                                                                                 tmp_path):
    from flair_core.model_config import ConfigError

    config = load_run_config([], [f"{k}={v}" for k, v in {
        "train.model": "micro-32", "train.shards": tiny_data / "train", "train.batch_size": 8,
        "train.steps_per_epoch": 2, "loader.workers": 0}.items()])
    Trainer(config, tmp_path / "run").fit()
    (tmp_path / "run" / "config.yaml").write_text("train: {lr: [not, a, number]}\n")
    for _ in range(2):  # the second attempt is refused for the same reason, not as "being written"
        with pytest.raises(ConfigError, match="config.yaml: train.lr"):
            Trainer(config, tmp_path / "run", resume="auto")
    assert not (tmp_path / "run" / ".lock").exists()


def test_existing_run_is_not_overwritten_and_bad_resumes_are_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert flair("train", "--out", str(run), *common(tiny_data)).returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    again = flair("train", "--out", str(run), *common(tiny_data))
    assert again.returncode == 2 and "already holds a run" in again.stderr

    missing = flair("train", "--out", str(run), *common(tiny_data), "--resume", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no complete checkpoint found" in missing.stderr

    other = flair("train", "--out", str(run), *common(tiny_data), "--set", "train.model=tiny-64",
                  "--resume", "auto")
    assert other.returncode == 2 and "train.model 'micro-32' -> 'tiny-64'" in other.stderr
    assert other.stderr.count("\n") == 1

    (run / "checkpoints" / ".step-00000009.pt.tmp-1").write_bytes(b"half written")
    resumed = flair("train", "--out", str(run), *common(tiny_data), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr  # the stray temp file is never taken for a checkpoint
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and ".tmp-" not in p.name}
    assert after == before  # already complete: nothing retrained, nothing rewritten but config.yaml


@pytest.mark.parametrize("name", ["cpu", "vit-b16-cc3m"])
@pytest.mark.parametrize("method", METHODS)
def test_shipped_params_files_validate_and_build_every_method_with_its_recipe(name, method):
    from flair_core import create_model

    config = load_run_config([REPO / "params" / f"{name}.yaml"], [f"method.name={method}"])
    with torch.device("meta"):
        model = create_model(config.train.model, config.method.name, settings=config.method_settings())
    assert model.config.vision_cfg.image_size in (64, 224)
    assert config.method.name == method
    if method == "flair":  # the paper's loss: both terms train
        assert 0 < config.method_settings().tcs_weight < 1


@pytest.mark.parametrize("option", ["train.precision=bf16", "train.grad_checkpointing=true"])
def test_bf16_autocast_and_gradient_checkpointing_train(option, tiny_data, tmp_path):
    key, value = option.split("=")
    config = run_config(tiny_data, **{key: value, "train.steps_per_epoch": 3})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.fit().name == "step-00000003.pt"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(torch.isfinite(torch.tensor(x["loss/total"])) for x in lines)


def test_validation_runs_every_n_steps_and_a_callback_can_stop_the_run(tiny_data, tmp_path):
    config = run_config(tiny_data, **{"train.steps_per_epoch": 6, "train.validate_every": 2})
    seen = []
    trainer = Trainer(config, tmp_path / "run",
                      on_validation=lambda step, metrics: seen.append((step, metrics)))
    trainer.fit()
    key = "retrieval/builtin_fine_grained/flair/t2i_r1"
    assert [step for step, _ in seen] == [2, 4, 6]
    assert all(0 <= metrics[key] <= 100 and metrics["retrieval/builtin_fine_grained/num_images"] == 64
               for _, metrics in seen)  # the val split (64 images), not test
    lines = [json.loads(x) for x in (tmp_path / "run" / "val_metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x[key]) for x in lines] == [(step, m[key]) for step, m in seen]
    assert trainer.val_metrics == seen[-1][1]
    # the last validation's per-query records, from which its R@1 is recomputed
    records = load_records(tmp_path / "run" / "validation" / "builtin_fine_grained.queries.npz")
    assert 100 * (records["flair/t2i/rank"] < 1).mean() == pytest.approx(trainer.val_metrics[key])

    class Stop(Exception):
        pass

    def stop_at_four(step, metrics):
        if step == 4:
            raise Stop

    mixed = run_config(tiny_data, **{"train.steps_per_epoch": 2, "train.validate_every": 2,
                                     "train.validate_on": "[builtin_fine_grained, builtin_segmentation]"})
    both = Trainer(mixed, tmp_path / "mixed")
    both.fit()
    assert {"retrieval/builtin_fine_grained/flair/t2i_r1", "segmentation/builtin_segmentation/attention/miou",
            "segmentation/builtin_segmentation/patch/miou"} <= set(both.val_metrics)

    with pytest.raises(Stop):
        Trainer(run_config(tiny_data, **{"train.steps_per_epoch": 6, "train.validate_every": 2}),
                tmp_path / "stopped", on_validation=stop_at_four).fit()
    steps = [json.loads(x)["step"] for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_method_trains_with_its_recipe_and_overrides_still_win(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: 1.0e-3, batch_size: 32}\n"
                      "recipes:\n"
                      "  clip: {train: {lr: 3.0e-4}, method: {settings: {text: long_caption}}}\n"
                      "  flair: {method: {settings: {tcs_weight: 1.0}}}\n")
    clip = load_run_config([params], ["method.name=clip"])
    assert (clip.train.lr == 3e-4 and clip.train.batch_size == 32
            and clip.method_settings().text == "long_caption")
    assert load_run_config([params], ["method.name=flair"]).method_settings().tcs_weight == 1.0
    assert load_run_config([params], ["method.name=filip"]).train.lr == 1e-3  # no recipe: the file's values
    assert load_run_config([params], ["method.name=clip", "train.lr=5e-4"]).train.lr == 5e-4
    assert "recipes" not in load_run_config([params]).model_dump()


def test_a_recipe_beats_its_own_file_and_the_files_before_it_but_not_the_files_after_it(tmp_path):
    base, small, later_recipe = tmp_path / "base.yaml", tmp_path / "small.yaml", tmp_path / "later.yaml"
    base.write_text("train: {lr: 1.0e-3, warmup_steps: 5}\n"
                    "recipes: {flair: {train: {lr: 9.0e-4, warmup_steps: 70}, sampling: {k: 5}}}\n")
    small.write_text("train: {warmup_steps: 2}\n")  # a smaller preset read after the recipe's file
    later_recipe.write_text("recipes: {flair: {sampling: {k: 3}}}\n")
    config = load_run_config([base, small])
    assert (config.train.lr, config.train.warmup_steps, config.sampling.k) == (9e-4, 2, 5)
    assert load_run_config([base, small, later_recipe]).sampling.k == 3
    assert load_run_config([small, base]).train.warmup_steps == 70
    assert load_run_config([base, small], ["method.name=clip"]).train.lr == 1e-3  # another method's recipe
    # The shipped tiny preset keeps its own schedule for every method, whatever the CPU recipes tuned.
    tiny = [REPO / "params" / f"{name}.yaml" for name in ("cpu", "pipeline")]
    for method in ("flair", "clip", "filip", "dreamlip"):
        train = load_run_config(tiny, [f"method.name={method}"]).train
        assert (train.lr, train.warmup_steps) == (1e-3, 2), method


def test_a_section_is_merged_and_overridden_as_in_a_run_config():
    from flair_core.data.builtin import BuiltinDataConfig
    from flair_core.run_config import load_section

    params = [REPO / "params" / f"{name}.yaml" for name in ("cpu", "pipeline")]
    section = load_section(BuiltinDataConfig, "data", params, ["image_size=48", "data.seed=3"])
    assert section == load_run_config(params, ["data.image_size=48", "data.seed=3"]).data
    # override, 2nd, 1st file
    assert (section.image_size, section.train_images, section.level) == (48, 128, "easy")


def test_a_folder_without_a_run_config_is_named(tmp_path):
    from flair_core.model_config import ConfigError

    with pytest.raises(ConfigError, match=f"{tmp_path}: no config.yaml"):
        read_run_config(tmp_path)


@pytest.mark.parametrize("recipes,message", [
    ("recipes: {siglip: {train: {lr: 1.0}}}", "recipes: unknown method 'siglip'"),
    ("recipes: [clip]", "recipes: expected a mapping"),
])
def test_bad_recipes_name_the_problem(recipes, message, tmp_path):
    from flair_core.model_config import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text(recipes + "\n")
    with pytest.raises(ConfigError, match=message):
        load_run_config([params])


@pytest.mark.parametrize("method,settings,expected", [
    ("flair", "{tcs_weight: 0.5}", 4 / (16 + 4 - 1)),  # TCS: K of B + K − 1 texts are positive
    ("flair", "{tcs_weight: 0.0}", 1 / 16),  # MPS alone: K of B·K
    ("clip", "{loss: sigmoid}", 1 / 16),
])
def test_auto_logit_bias_starts_at_the_constant_optimum(method, settings, expected, tiny_data, tmp_path):
    import math

    config = run_config(tiny_data, **{"method.name": method, "method.settings": settings, "sampling.k": 4,
                                      "train.init_logit_bias": "auto", "train.init_logit_scale": 10,
                                      "train.steps_per_epoch": 1})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.head.logit_bias.item() == pytest.approx(math.log(expected / (1 - expected)), rel=1e-5)
    assert trainer.head.logit_scale.exp().item() == pytest.approx(10, rel=1e-5)
    # at that bias, a constant prediction's gradient on the bias vanishes: the base rate is already right
    p = torch.sigmoid(trainer.head.logit_bias).item()
    assert p == pytest.approx(expected, rel=1e-5)
