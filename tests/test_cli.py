"""The `flair` command: success output and one-line errors with a non-zero exit."""

import subprocess
import sys

import torch

from flair_core import create_model

FLAIR = [sys.executable, "-m", "flair_cli"]


def run(*args):
    return subprocess.run([*FLAIR, *args], check=False, capture_output=True, text=True)


def test_models_lists_presets():
    result = run("models")
    assert result.returncode == 0
    assert "ViT-B-16-FLAIR" in result.stdout and "150.67 M params" in result.stdout


def test_check_weights_loads_and_reports(tmp_path):
    model = create_model("micro-32")
    with torch.no_grad():
        model.logit_bias.fill_(-3.5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    result = run("check-weights", str(tmp_path / "w.pt"), "--model", "micro-32")
    assert result.returncode == 0, result.stderr
    assert "loaded 73 tensors" in result.stdout and "logit_bias=-3.5000" in result.stdout


def test_check_weights_errors_are_one_line(tmp_path):
    torch.save(create_model("micro-32").state_dict(), tmp_path / "w.pt")
    result = run("check-weights", str(tmp_path / "w.pt"), "--model", "tiny-64")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not match the model" in result.stderr


def test_check_weights_refuses_nonfinite_tensors_names_noise_and_reads_our_checkpoints(tmp_path, tiny_data):
    model = create_model("micro-32")
    with torch.no_grad():
        model.logit_bias.fill_(float("nan"))
    torch.save(model.state_dict(), tmp_path / "nan.pt")
    nan = run("check-weights", str(tmp_path / "nan.pt"), "--model", "micro-32")
    assert nan.returncode == 2 and nan.stderr.count("\n") == 1, nan.stderr
    assert "1 of 73 tensors hold NaN or inf values, first: logit_bias" in nan.stderr
    allowed = run("check-weights", str(tmp_path / "nan.pt"), "--model", "micro-32", "--allow-nonfinite")
    assert allowed.returncode == 0 and "logit_bias=nan" in allowed.stdout

    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 256)) * 40)
    noise = run("check-weights", str(tmp_path / "noise.pt"))
    assert noise.returncode == 2
    assert "not a checkpoint (neither a torch zip file nor a pickle)" in noise.stderr

    trained = run("train", "--out", str(tmp_path / "run"), "--set", "train.model=micro-32", "--set",
                  f"train.shards={tiny_data / 'train'}", "--set", "train.batch_size=8", "--set",
                  "train.steps_per_epoch=1", "--set", "loader.workers=0", "--set", "method.name=clip")
    assert trained.returncode == 0, trained.stderr
    ours = run("check-weights", str(next((tmp_path / "run" / "checkpoints").glob("*.pt"))))  # no --model
    assert ours.returncode == 0, ours.stderr
    assert "into the architecture it records (clip, " in ours.stdout


def test_attention_draws_flair_maps_and_says_why_other_methods_have_none(tmp_path, tiny_data):
    from flair_cli import main

    torch.save(create_model("micro-32").state_dict(), tmp_path / "flair.pt")
    assert main(["attention", str(tmp_path / "flair.pt"), "--model", "micro-32", "--root", str(tiny_data),
                 "--count", "2", "--out", str(tmp_path / "maps")]) == 0
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pngs) == 2 and all(p.with_suffix(".txt").read_text() for p in pngs)

    torch.save(create_model("micro-32", "clip").state_dict(), tmp_path / "clip.pt")
    result = run("attention", str(tmp_path / "clip.pt"), "--model", "micro-32", "--method", "clip", "--root",
                 str(tiny_data), "--out", str(tmp_path / "none"))
    assert result.returncode == 0 and "clip has no text-conditioned attention" in result.stdout
    assert not (tmp_path / "none").exists()
    missing = run("attention", str(tmp_path / "flair.pt"), "--model", "micro-32", "--root", str(tmp_path))
    assert missing.returncode == 2 and "no test shards" in missing.stderr and missing.stderr.count("\n") == 1


def test_parsing_any_verb_imports_no_library():
    """`flair --help` and each verb's parsing stay free of torch and open_clip (seconds): a verb imports what
    it needs when it runs."""
    probe = ("import sys\n"
             "from flair_cli import build_parser\n"
             "parser = build_parser()\n"
             "for argv in (['methods'], ['benchmarks', '--names'], ['prepare', '--out', 'x'], ['train', "
             "'--out', 'x'], ['evaluate', 'run', '--benchmark', 'voc'], ['compare', 'eval', '--out', 'r']):\n"
             "    parser.parse_args(argv)\n"
             "print(sorted(m for m in ('torch', 'open_clip', 'flair_core', 'numpy') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
    assert run("--help").returncode == 0 and "benchmarks" in run("--help").stdout


def test_benchmarks_lists_every_registered_benchmark():
    from flair_core.data.registry import BENCHMARKS

    result = run("benchmarks", "--names")
    assert result.returncode == 0 and result.stdout.split() == list(BENCHMARKS)
    table = run("benchmarks").stdout
    assert "voc" in table and "segmentation" in table and "default split: val" in table


def test_evaluate_and_prepare_refuse_an_output_another_process_writes(tmp_path, tiny_data):
    """One writer per output: while a live process holds it, a second evaluate (its --out-dir or --out file)
    or prepare (its --out) stops with one line naming the holder and writes nothing."""
    import os

    from flair_core.fileio import lock_folder

    eval_dir, data = tmp_path / "eval", tmp_path / "data"
    holders = [lock_folder(eval_dir, "the test"),
               lock_folder(tmp_path, "the test", lock_file=tmp_path / ".one.json.lock"),
               lock_folder(data, "the test", lock_file=tmp_path / ".data.lock")]
    try:
        busy = [run("evaluate", str(tmp_path / "no-checkpoint"), "--root", str(tiny_data), "--benchmark",
                    "builtin_fine_grained", *out) for out in (["--out-dir", str(eval_dir)],
                                                              ["--out", str(tmp_path / "one.json")])]
        busy.append(run("prepare", "--set", "train_images=64", "--out", str(data)))
        for result in busy:
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1
            assert f"is being written by the test (pid {os.getpid()} on " in result.stderr
        assert sorted(p.name for p in eval_dir.iterdir()) == [".lock"]
        assert not (tmp_path / "one.json").exists() and not data.exists()  # nothing written
    finally:
        for holder in holders:
            holder.release()
    freed = run("prepare", "--set", "train_images=64", "--set", "val_images=16", "--set", "test_images=16",
                "--set", "classification_images=12", "--set", "image_size=32", "--out", str(data))
    assert freed.returncode == 0, freed.stderr
