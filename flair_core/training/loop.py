"""One training loop for every method, from one CPU process to many GPU nodes (torchrun).

Rank 0 writes the run folder: `config.yaml` (the validated config), `metrics.jsonl` (one line per step:
loss terms, lr, logit scale, samples/s), `val_metrics.jsonl` (one line per validation, when
`train.validate_every` is set) and `checkpoints/step-*.pt`. `resume="auto"` continues from the
newest complete checkpoint with optimizer, scheduler, scaler, loss and RNG state and the data position, so a
killed and resumed run ends with the same weights as an uninterrupted one. Every file is written whole or not
at all (`flair_core.fileio`), so a run stopped by a full disk resumes the same way once there is room.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from flair_core import checkpoints, distributed
from flair_core.data.loader import train_loader
from flair_core.data.registry import get_benchmark
from flair_core.evaluation.records import records_path, save_records
from flair_core.evaluation.runner import EvalOptions, evaluate_benchmark
from flair_core.fileio import FolderBusy, FolderLock, append_line, lock_folder, write_atomic
from flair_core.methods import get_method
from flair_core.model_config import ConfigError, ModelConfig, load_model_config
from flair_core.models import create_model
from flair_core.preprocess import get_tokenizer, get_transform
from flair_core.run_config import RUN_CONFIG_FILE, RunConfig, dump_run_config, read_run_config
from flair_core.training.optim import clamp_logit_scale, param_groups, warmup_cosine
from flair_core.weights import CheckpointError, load_checked, load_weights

log = logging.getLogger(__name__)


# What may change when a run resumes: how long it goes on, how often it logs, validates and checkpoints, and
# how many loader processes feed it. Anything else (lr, model, data, K...) would make the run a mixture that
# its config.yaml does not describe; each change is kept in config_history.jsonl.
SAFE_ON_RESUME = frozenset({"train.epochs", "train.log_every", "train.checkpoint_every",
                            "train.keep_checkpoints", "train.validate_every", "loader.workers"})
CONFIG_HISTORY = "config_history.jsonl"


def flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (lists and values are leaves)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Stopped(Exception):
    """Training stopped between two steps on a signal (SIGTERM); str() is one line saying where to resume."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal = signal_number


@contextlib.contextmanager
def stop_requests(signals=(signal.SIGTERM,)):
    """Within: the signals set a flag (the yielded list gets their number) instead of ending the process, so
    the loop can stop between steps. Outside the main thread, signals cannot be caught: nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda number, _frame: received.append(number)) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def shard_urls(spec: str) -> list[str] | str:
    path = Path(spec)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise ConfigError(f"train.shards: no .tar shards in {path}")
        return urls
    return spec


def samples_per_epoch(config: RunConfig) -> int:
    if config.train.samples_per_epoch:
        return config.train.samples_per_epoch
    meta = Path(config.train.shards).parent / "meta.json"
    if not meta.is_file():
        raise ConfigError(f"train.samples_per_epoch is not set and {meta} (built-in data) does not exist")
    return json.loads(meta.read_text())["counts"]["train"]


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def merge_outputs(fresh: dict, cached: list[dict], index: int) -> dict:
    """Micro-batch `index` with gradients, the others from the no-grad pass, concatenated in batch order.

    Scalars (logit scale/bias) enter every micro-step's full-batch loss: they keep their gradient only in
    the last one, or it would be counted once per micro-batch.
    """
    last = index == len(cached) - 1
    return {
        key: torch.cat([fresh[key] if i == index else c[key] for i, c in enumerate(cached)])
        if fresh[key].ndim > 0 else (fresh[key] if last else fresh[key].detach())
        for key in fresh
    }


class Trainer:
    """`on_validation(step, metrics)` runs on every rank after each validation (metrics broadcast from rank
    0), so a caller can stop a run early by raising; e.g. a hyper-parameter search pruning a bad trial."""

    def __init__(self, config: RunConfig, out: Path, resume: str | None = None,
                 on_validation: Callable[[int, dict[str, float]], None] | None = None):
        self.config, self.out = config, Path(out)
        self.on_validation = on_validation
        self.val_metrics: dict[str, float] = {}
        t = config.train
        self.world = distributed.init(t.device)
        torch.manual_seed(t.seed + self.world.rank)
        random.seed(t.seed + self.world.rank)
        spec = get_method(config.method.name)
        settings = config.method_settings()
        self.loss_fn = spec.loss(settings, seed=t.seed).to(self.world.device)
        self.views = self.loss_fn.views(config.sampling)
        global_batch = t.batch_size * self.world.size
        self.head = create_model(self._model_config(global_batch), config.method.name, settings=settings)
        if t.init_from:
            load_weights(self.head, t.init_from)
        self.head.to(self.world.device)
        if t.grad_checkpointing:
            self.head.set_grad_checkpointing(True)
        self.model = self.head
        if self.world.size > 1:
            self.model = DistributedDataParallel(self.head, device_ids=[self.world.local_rank]
                                                 if self.world.device.type == "cuda" else None)
        if t.compile:
            self.model = torch.compile(self.model)
        self.steps_per_epoch = t.steps_per_epoch or samples_per_epoch(config) // global_batch
        if self.steps_per_epoch < 1:
            raise ConfigError(f"train: fewer samples per epoch than one global batch of {global_batch}")
        self.total_steps = t.epochs * self.steps_per_epoch
        # fused: one kernel per parameter group instead of a chain of element-wise ops (8 % of a CPU step)
        self.optimizer = torch.optim.AdamW(param_groups(self.head, t.lr, t.weight_decay, t.scalar_lr),
                                           betas=t.betas, eps=t.eps, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(t.warmup_steps,
                                                                                          self.total_steps))
        self.scaler = torch.amp.GradScaler(self.world.device.type,
                                           enabled=t.precision == "fp16" and self.world.device.type == "cuda")
        self.step = 0
        self.ckpt_dir = self.out / "checkpoints"
        self._lock: FolderLock | None = None  # rank 0's, taken by _start
        self._revision: dict[str, list] = {}  # settings changed on resume (SAFE_ON_RESUME only)
        self._start(resume)

    # ------------------------------------------------------------------------------------------ set-up
    def _model_config(self, global_batch: int) -> ModelConfig:
        """The model config with the run's initial logit scale and bias, where the params set them."""
        t = self.config.train
        update = {}
        if t.init_logit_scale is not None:
            update["init_logit_scale"] = math.log(t.init_logit_scale)
        if t.init_logit_bias == "auto":
            rate = self.loss_fn.positive_rate(global_batch, self.views.sampling.k)
            if rate is not None:  # softmax losses have no bias
                update["init_logit_bias"] = math.log(rate / (1 - rate))
        elif t.init_logit_bias is not None:
            update["init_logit_bias"] = float(t.init_logit_bias)
        return load_model_config(t.model).model_copy(update=update)

    def _start(self, resume: str | None) -> None:
        # Rank 0 takes the run folder's one-writer lock, decides which checkpoint (or error) applies and tells
        # the others, so all act alike.
        decision = [self._lock_and_decide(resume) if self.world.is_main else None]
        if self.world.size > 1:
            torch.distributed.broadcast_object_list(decision, src=0)
        kind, value = decision[0]
        if kind == "busy":
            raise FolderBusy(value)
        try:
            if kind == "error":
                raise (CheckpointError if "checkpoint" in value else ConfigError)(value)
            self._fresh = kind == "fresh"
            if kind == "resume":
                self._restore(checkpoints.load(Path(value)), Path(value))
            if self.world.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                if self._revision:  # the settings safe to change on resume, changed: a new revision, recorded
                    append_line(self.out / CONFIG_HISTORY, json.dumps(
                        {"step": self.step, "time": time.time(), "changed": self._revision}))
                    log.info("resuming at step %d with changed settings: %s", self.step,
                             ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self._revision.items()))
                dump_run_config(self.config, self.out / RUN_CONFIG_FILE)
                self._truncate_metrics()
        except BaseException:
            self.release()  # now, not when the traceback that holds this half-built trainer is dropped
            if self.world.is_main and self._created and not (self.out / RUN_CONFIG_FILE).exists():
                with contextlib.suppress(OSError):  # a run that never started leaves no folder behind
                    self.out.rmdir()
            raise

    def release(self) -> None:
        """Let another writer have the run folder (`fit` does this when it returns or fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _lock_and_decide(self, resume: str | None) -> tuple[str, str | None]:
        self._created = not self.out.exists()
        try:
            self._lock = lock_folder(self.out, "flair train")
        except FolderBusy as busy:
            return "busy", str(busy)
        try:  # an error is returned, not raised: the other ranks wait for this decision
            kind, value = self._decide(resume)
            changed = self._changed_settings() if kind == "resume" else {}
        except (ConfigError, CheckpointError) as err:
            return "error", str(err)
        unsafe = {key: change for key, change in changed.items() if key not in SAFE_ON_RESUME}
        if unsafe:
            listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in unsafe.items())
            return "error", (f"{self.out}: resuming would change settings the run trained with ({listed}); "
                             f"only {', '.join(sorted(SAFE_ON_RESUME))} may change on resume: use another "
                             "--out for the rest")
        self._revision = {key: list(change) for key, change in changed.items()}
        return kind, value

    def _changed_settings(self) -> dict[str, tuple]:
        """Setting -> (recorded, given) for every setting that differs from the run folder's config.yaml."""
        if not (self.out / RUN_CONFIG_FILE).is_file():
            return {}
        recorded = flat(read_run_config(self.out).model_dump(mode="json"))
        given = flat(self.config.model_dump(mode="json"))
        return {key: (recorded.get(key), given.get(key)) for key in sorted(recorded.keys() | given.keys())
                if recorded.get(key) != given.get(key)}

    def _decide(self, resume: str | None) -> tuple[str, str | None]:
        if resume == "auto":
            path, _, skipped = checkpoints.newest_readable(self.ckpt_dir)  # every rank loads it below
            for reason in skipped:
                log.warning("skipped a checkpoint --resume auto cannot use: %s", reason)
            if path is None and skipped:  # starting over would truncate the metrics and prune the evidence
                return "error", (f"{self.ckpt_dir}: no readable checkpoint ({len(skipped)} skipped, newest: "
                                 f"{skipped[0]}); move them away to start over")
            return ("resume", str(path)) if path else ("fresh", None)
        if resume:
            given = Path(resume)
            folder = given / "checkpoints" if (given / "checkpoints").is_dir() else given
            path = checkpoints.newest(folder) if given.is_dir() else given
            if path is None or not path.is_file():
                return "error", f"--resume {resume}: no complete checkpoint found"
            return "resume", str(path)
        if (self.out / RUN_CONFIG_FILE).exists():
            return "error", (f"{self.out} already holds a run: pass --resume auto to continue it, or another "
                             "--out")
        return "fresh", None

    def _restore(self, state: dict, path: Path) -> None:
        load_checked(self.head, state["model"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state.get("loss", {}), strict=False)
        self.step = state["step"]
        checkpoints.restore_rng(state["rng"][self.world.rank] if isinstance(state["rng"], list)
                                else state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def _truncate_metrics(self) -> None:
        """Drop lines past the resumed step, so a resumed run's metrics have no duplicates."""
        for metrics in (self.out / "metrics.jsonl", self.out / "val_metrics.jsonl"):
            if metrics.exists():
                lines = metrics.read_text().splitlines()
                kept = [line for line in lines if json.loads(line)["step"] <= self.step]
                if len(kept) < len(lines):
                    write_atomic(metrics, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------------------------------ training
    def accumulate_gradients(self, batch: dict) -> dict[str, torch.Tensor]:
        """Forward and backward of one batch (in `accum_freq` micro-batches over the whole batch's negatives);
        the loss terms. The optimizer step is the caller's."""
        t = self.config.train
        inputs = [x.to(self.world.device, non_blocking=True) for x in self.loss_fn.inputs(batch)]
        if t.accum_freq == 1:
            with autocast(t.precision, self.world.device):
                terms = self.loss_fn(self.model(*inputs), self.head)
            self.scaler.scale(sum(terms.values())).backward()
            return terms
        # Gradient accumulation with the negatives of the whole batch (as open_clip): features of every
        # micro-batch without grad first, then each micro-batch again with grad inside the full-batch loss.
        micro = list(zip(*(x.chunk(t.accum_freq) for x in inputs), strict=True))
        with torch.no_grad(), autocast(t.precision, self.world.device):
            cached = [self.model(*m) for m in micro]
        # Parameters used inside the loss see the whole batch in every micro-step: they get their gradient
        # from the last micro-step only.
        loss_params = [p for p in self.loss_fn.own_parameters(self.head) if p.requires_grad]
        for j, m in enumerate(micro):
            last = j == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.world.size == 1 else self.model.no_sync()
            for p in loss_params:
                p.requires_grad_(last)
            with sync:
                with autocast(t.precision, self.world.device):
                    terms = self.loss_fn(merge_outputs(self.model(*m), cached, j), self.head)
                self.scaler.scale(sum(terms.values())).backward()
        return terms

    def _optimizer_step(self) -> None:
        t = self.config.train
        if t.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.loss_fn.advance()
        clamp_logit_scale(self.head)

    def _state(self) -> dict:
        rng = checkpoints.rng_state()
        if self.world.size > 1:  # every rank's RNG, so each resumes its own stream
            gathered = [None] * self.world.size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        return {
            "model": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch,
            "rng": rng,
            "method": self.config.method.name,
            "method_settings": self.config.method_settings().model_dump(mode="json"),
            "model_config": self.head.config.model_dump(mode="json"),
        }

    def _checkpoint(self) -> Path | None:
        state = self._state()  # collective: every rank takes part
        if self.world.is_main:
            return checkpoints.save(self.ckpt_dir, self.step, state, self.config.train.keep_checkpoints)
        return None

    def _log(self, terms: dict, seconds: float, progress) -> None:
        values = {f"loss/{k}": distributed.all_reduce_mean(v.detach().float()).item()
                  for k, v in terms.items()}
        values["loss/total"] = sum(values.values())
        if not self.world.is_main:
            return
        t = self.config.train
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **values,
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "logit_scale": self.head.logit_scale.exp().item(),
                  "samples_per_s": t.batch_size * self.world.size / seconds, "seconds": seconds}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"step {self.step}: loss is not finite ({values})")
        append_line(self.out / "metrics.jsonl", json.dumps(record))
        if progress is not None:
            progress.set_postfix(loss=f"{values['loss/total']:.4f}", refresh=False)
            progress.update(1)
        elif self.step % t.log_every == 0 or self.step == self.total_steps:
            log.info("step %d/%d loss %.4f lr %.2e scale %.2f %.1f samples/s", self.step, self.total_steps,
                     values["loss/total"], record["lr"], record["logit_scale"], record["samples_per_s"])

    def _validate(self) -> None:
        """Score the validation benchmarks (rank 0; the others wait for the broadcast result)."""
        t = self.config.train
        metrics = [None]
        if self.world.is_main:
            root = t.validate_root or str(Path(t.shards).parent)
            # retrieval in the method's own mode only (the fast one that matters), headline metrics only
            # (the diagnostics are for the final evaluation); other families: their defaults
            own = EvalOptions(modes=(get_method(self.config.method.name).primary_mode,),
                              device=str(self.world.device), diagnostics=False)
            default = EvalOptions(device=str(self.world.device))
            self.head.eval()
            with torch.no_grad():
                values = {}
                for benchmark in t.validate_on:
                    options = own if get_benchmark(benchmark).family == "retrieval" else default
                    evaluation = evaluate_benchmark(self.head, benchmark, root, t.validate_split, options)
                    values.update(evaluation.metrics)
                    # the latest validation's per-query records: two runs (e.g. sweep trials) compared paired
                    (self.out / "validation").mkdir(exist_ok=True)
                    save_records(records_path(self.out / "validation", benchmark), evaluation.records)
            self.head.train()
            metrics = [values]
            append_line(self.out / "val_metrics.jsonl", json.dumps({"step": self.step, **values}))
        if self.world.size > 1:
            torch.distributed.broadcast_object_list(metrics, src=0)
        self.val_metrics = metrics[0]
        if self.on_validation is not None:
            self.on_validation(self.step, self.val_metrics)

    def fit(self) -> Path | None:
        """Train to the end; returns the newest checkpoint (rank 0). A SIGTERM stops it between two steps with
        `Stopped`, after a checkpoint (one process) or at the last periodic one (several)."""
        try:
            return self._fit()
        except Exception:
            self._discard_if_unstarted()
            raise
        finally:
            self.release()

    def _discard_if_unstarted(self) -> None:
        """A fresh run that failed before its first step (unreadable shards, a non-finite loss at once) has
        nothing to keep or resume: remove what it wrote, so a plain re-run is not refused as "already holds a
        run". Files it did not write stay. A run stopped later (a pruned trial, a crash at step k) keeps its
        metrics and validation records: they are what happened."""
        if not (self.world.is_main and self._fresh and self.step == 0):
            return
        for name in (RUN_CONFIG_FILE, "metrics.jsonl", "val_metrics.jsonl"):
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.out / "validation", ignore_errors=True)
        with contextlib.suppress(OSError):
            self.ckpt_dir.rmdir()  # only if empty: stray temp files of a failed save stay visible
        if self._created:
            self.release()  # its lock file goes with it
            with contextlib.suppress(OSError):
                self.out.rmdir()

    def _fit(self) -> Path | None:
        progress = None
        if self.world.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc=self.config.method.name)
        tokenizer, transform = get_tokenizer(self.head.config), get_transform(self.head.config, train=True)
        last = None
        self.model.train()
        with stop_requests() as received:
            while self.step < self.total_steps:
                last = self._epoch(tokenizer, transform, progress, received) or last
        if progress is not None:
            progress.close()
        if last is None and self.world.is_main:
            last = checkpoints.newest(self.ckpt_dir)
        return last

    def _stop(self, signal_number: int, last: Path | None) -> None:
        """Stop between steps: one process checkpoints where it is (a group's ranks may be a step apart, so
        they resume from the last periodic checkpoint instead), then raise Stopped."""
        if self.world.size == 1 and (last is None or checkpoints.step_of(last) != self.step):
            last = self._checkpoint()
        resume = f"step {checkpoints.step_of(last)}" if last else "the start"
        raise Stopped(f"stopped by {signal.Signals(signal_number).name} at step {self.step} of "
                      f"{self.total_steps}; --resume auto continues from {resume}", signal_number)

    def _epoch(self, tokenizer, transform, progress, received: list[int]) -> Path | None:
        """The rest of the current epoch; the newest checkpoint written meanwhile."""
        t = self.config.train
        last = None
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        batches = train_loader(shard_urls(t.shards), self.views, tokenizer, transform, t.batch_size,
                               self.steps_per_epoch, self.config.loader, seed=t.seed, epoch=epoch,
                               rank=self.world.rank, world=self.world.size, skip_batches=skip)
        tick = time.perf_counter()
        for batch in batches:
            terms = self.accumulate_gradients(batch)
            self._optimizer_step()
            self.step += 1
            now = time.perf_counter()  # wall time per step, data waiting included
            self._log(terms, now - tick, progress)
            tick = now
            if self.step % t.checkpoint_every == 0 or self.step == self.total_steps:
                last = self._checkpoint()
            if t.validate_every and (self.step % t.validate_every == 0 or self.step == self.total_steps):
                self._validate()
            if received:
                self._stop(received[0], last or checkpoints.newest(self.ckpt_dir))
        return last


def train(config: RunConfig, out: str | Path, resume: str | None = None,
          on_validation: Callable[[int, dict[str, float]], None] | None = None) -> Path | None:
    """Train to the end; returns the final checkpoint (rank 0)."""
    try:
        return Trainer(config, Path(out), resume, on_validation).fit()
    finally:
        distributed.shutdown()
