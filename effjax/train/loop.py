"""The training loop: resumable, evaluated, logged, checkpointed, sharded.

Everything a step depends on is a function of ``(seed, step)``: the batch
(``data.train_batch(step)``, see effjax.data.batching.BatchOrder) and the random key
(``jax.random.fold_in(key(seed), step)``). Restoring the parameters and optimizer
state of step ``s`` from a checkpoint therefore continues exactly as the
uninterrupted run would have. SIGINT/SIGTERM finish the current step, save a
checkpoint and return; a crash loses at most ``checkpoint_every`` steps.

Files in the work directory:

* ``config.json``: the run's configuration; a rerun must match it (run-control
  fields such as ``num_steps`` or intervals may change; see
  effjax.train.config.RESUMABLE_CHANGES), else :func:`train` stops before writing.
* ``checkpoints/<step>/``: the train state, saved and restored by
  effjax.train.checkpoint (written to a temporary directory and renamed, so a
  checkpoint is complete or absent).
* ``metrics.jsonl``: one JSON object per log or evaluation, appended with a single
  ``write`` each; records after the restored step are dropped on resume.
* ``tensorboard/``: the same scalars as TensorBoard event files (tensorboardX).

On a multi-host run (effjax.train.distributed) every process runs :func:`train` with
the same arguments: each loads its rows of every batch, orbax writes the checkpoints
from all of them, and process 0 alone writes config.json, metrics.jsonl and the event
files and shows progress. A stop signal to any process stops all at the same step.

Progress goes to stderr: a rich progress bar on a terminal, else one line per log
interval; a resumed run says the step it resumed from, and rerunning a finished run
changes nothing (no new record, no new event file) and returns its recorded metrics.

Example:
  >>> result = train(config, "/tmp/run", model=model, data=data)  # doctest: +SKIP
  >>> result["test/accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from effjax.layers import MOE_LOSSES, cores, moe_aux_losses
from effjax.models.memory import COMPRESSION_LOSSES, MEMORY, compression_losses
from effjax.train import checkpoint, sharding
from effjax.train.config import ExperimentConfig, OptimizerConfig, incompatibilities, to_json


class TrainState(struct.PyTreeNode):
    """All a resumed run needs: ``step`` (int32 scalar), ``params``, ``opt_state``, and
    ``collections``, the model's non-trainable variables (Performer's random features)."""

    step: jax.Array
    params: Any
    opt_state: Any
    collections: Any = struct.field(default_factory=dict)


def make_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``learning_rate`` then cosine/linear/constant decay.

    The decay ends at ``decay_steps`` (default ``num_steps``) at
    ``end_fraction * learning_rate``.
    """
    total = config.decay_steps or num_steps
    peak, end = config.learning_rate, config.learning_rate * config.end_fraction
    warmup = min(config.warmup_steps, total)
    if config.decay == "constant":
        decay = optax.constant_schedule(peak)
    elif config.decay == "linear":
        decay = optax.linear_schedule(peak, end, max(total - warmup, 1))
    else:
        decay = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=end / peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    """AdamW on :func:`make_schedule`, after global-norm clipping when configured."""
    adamw = optax.adamw(
        make_schedule(config, num_steps),
        b1=config.b1,
        b2=config.b2,
        weight_decay=config.weight_decay,
    )
    if config.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)


def classification_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of ``logits [B, C]`` against ``batch["labels"] [B]``, and accuracy."""
    labels = batch["labels"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return loss.mean(), {"loss": loss.mean(), "accuracy": accuracy.mean()}


def language_model_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of ``logits [B, T, V]`` against ``batch["targets"] [B, T]`` over
    the real tokens of ``batch["padding_mask"]``, with next-token accuracy and
    ``bits_per_token`` (the loss in bits; bits per character for byte-level text)."""
    weights = batch["padding_mask"].astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]
    )
    loss = jnp.sum(losses * weights) / total
    hits = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    accuracy = jnp.sum(hits * weights) / total
    return loss, {"loss": loss, "accuracy": accuracy, "bits_per_token": loss / jnp.log(2.0)}


def _step_rngs(rng: jax.Array) -> dict[str, jax.Array]:
    """Dropout, and the attention key that randomised variants (LSH rotations, BigBird's
    random blocks) draw afresh at every training step."""
    return {"dropout": rng, "attention": jax.random.fold_in(rng, 1)}


def forward(
    model: nn.Module,
    params: Any,
    batch: dict[str, jax.Array],
    *,
    train: bool,
    rng: jax.Array | None,
    collections: Any = None,
    mutable: Any = False,
) -> Any:
    """``model(inputs, padding_mask, deterministic=not train)`` with per-step keys.

    The mask is passed positionally, as effjax.models' encoders take it
    (``attention_mask``, True/1 = a real token); a batch's ``global_attention_mask``
    (Longformer's global tokens, ``[B, T]``) goes to the model under that name, as
    effjax.models' encoders and decoders take it. ``collections`` are the model's
    non-trainable variables; in evaluation (``rng=None``) randomised variants use
    their fixed evaluation key. With ``mutable`` (collection names) the result is
    ``(outputs, mutated collections)``, as ``Module.apply``'s.
    """
    return model.apply(
        {"params": params, **(collections or {})},
        batch["inputs"],
        batch["padding_mask"],
        **_global_tokens(batch),
        deterministic=not train,
        rngs=None if rng is None else _step_rngs(rng),
        mutable=mutable,
    )


def _global_tokens(batch: dict) -> dict:
    """The model's ``global_attention_mask`` keyword when the batch carries one."""
    mask = batch.get("global_attention_mask")
    return {} if mask is None else {"global_attention_mask": mask}


#: The collections of auxiliary losses a model sows, each with its metric prefix and the
#: function that reduces it to ``{"aux_loss": the weighted total, statistics...}``.
AUX_LOSSES = {
    MOE_LOSSES: ("moe", moe_aux_losses),
    COMPRESSION_LOSSES: ("compression", compression_losses),
}


def _with_aux_losses(loss: jax.Array, metrics: dict, sown: Any) -> tuple[jax.Array, dict]:
    """Adds every sown auxiliary loss (:data:`AUX_LOSSES`: the Switch layers' weighted
    losses, the compressive memories' attention reconstruction) to ``loss`` and its
    statistics to ``metrics`` as ``<prefix>/<name>``; unchanged for a model that sowed
    none."""
    for collection, (prefix, reduce) in AUX_LOSSES.items():
        if sown.get(collection):
            aux = reduce(sown[collection])
            loss = loss + aux["aux_loss"]
            metrics = {**metrics, **{f"{prefix}/{k}": v for k, v in aux.items()}}
    return loss, metrics


LossFn = Callable[[jax.Array, dict], tuple[jax.Array, dict]]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    loss_fn: LossFn = classification_loss,
    axis_name: str | None = None,
    num_steps: int | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``; the key is ``fold_in(key(seed), step)``.

    With ``axis_name`` (pmap), gradients and metrics are averaged over that axis, so
    equal per-device batches give the full batch's mean-loss gradient. After the update,
    every attention core's per-step upkeep (effjax.layers.cores.upkeep: Performer's
    feature redraw, routing's centroid update) runs on ``state.collections`` with what
    the forward pass wrote to the cores' step collections
    (effjax.layers.cores.step_collections: routing's k-means statistics); ``num_steps``
    is the run's length, so nothing is redrawn after the last step and the model is
    evaluated with the non-trainable state it trained with.
    A model with Switch feed-forward layers (effjax.layers.SwitchFeedForward) adds their
    weighted auxiliary losses to ``loss_fn``'s loss and reports ``moe/aux_loss``,
    ``moe/load_balancing_loss``, ``moe/router_z_loss`` and ``moe/tokens_dropped`` (the
    fraction of tokens no expert took this step) among the metrics; one with a compressive
    memory (``DecoderConfig.compressed_mem_len``) adds its attention-reconstruction loss
    and reports ``compression/aux_loss`` and ``compression/attention_reconstruction``.
    A model that writes the ``"memory"`` collection (effjax.models.MEMORY: Transformer-XL's
    segment memory) gets it back at the next step: the data's consecutive batches are
    consecutive segments.
    """
    base_key = jax.random.key(seed)
    step_collections = cores.step_collections()

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(base_key, state.step)

        def loss(params):
            logits, mutated = forward(
                model,
                params,
                batch,
                train=True,
                rng=rng,
                collections=state.collections,
                mutable=[*AUX_LOSSES, MEMORY, *step_collections],
            )
            loss, metrics = _with_aux_losses(*loss_fn(logits, batch), mutated)
            written = {name: mutated[name] for name in step_collections if name in mutated}
            return loss, (metrics, _carried(mutated), written)

        (_, (metrics, carried, written)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params
        )
        if axis_name is not None:
            # Statistics summed over the batch (routing's k-means sums and counts) are
            # averaged like the gradients: their ratios are the full batch's.
            grads, metrics, written = jax.lax.pmean((grads, metrics, written), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        params = optax.apply_updates(state.params, updates)
        collections = cores.upkeep(
            {**state.collections, **carried, **written},
            rng=jax.random.fold_in(rng, 2),
            step=state.step + 1,
            num_steps=num_steps,
        )
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, collections=collections
        )
        return new_state, metrics

    return step


def _carried(mutated: Any) -> dict:
    """The collections a call hands to the next one (the segment memory)."""
    return {name: mutated[name] for name in (MEMORY,) if name in mutated}


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, batch: dict
) -> TrainState:
    """Parameters from ``key(seed)`` (split off the step keys) and a fresh optimizer state."""
    init_key = jax.random.fold_in(jax.random.key(seed), -1 % 2**31)
    variables = dict(
        model.init(
            {"params": init_key, "dropout": init_key, "attention": init_key},
            batch["inputs"],
            batch["padding_mask"],
            **_global_tokens(batch),
            deterministic=True,
        )
    )
    params = variables.pop("params")
    for name in AUX_LOSSES:  # per-step statistics, not state
        variables.pop(name, None)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        collections=variables,
    )


# ---------------------------------------------------------------- work directory


def _read_saved_config(workdir: Path) -> dict | None:
    path = workdir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_workdir(workdir: Path, config: ExperimentConfig) -> None:
    """Stops with a clear message when ``workdir`` belongs to another experiment.

    Raises:
      ValueError: ``workdir/config.json`` differs in a field that a resumed run
        cannot change, or checkpoints exist without a config.json (not an effjax
        work directory).
    """
    saved = _read_saved_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    has_checkpoints = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
    if saved is None:
        if has_checkpoints:
            raise ValueError(
                f"workdir {workdir} holds checkpoints but no config.json; refusing to "
                "resume or overwrite them (use a new --workdir)"
            )
        return
    problems = incompatibilities(saved, config)
    if problems:
        raise ValueError(
            f"workdir {workdir} holds a run with a different configuration; refusing to "
            "resume or overwrite it (use a new --workdir). Differences:\n  " + "\n  ".join(problems)
        )


def _replace_file(path: Path, text: str) -> None:
    """Writes ``path`` through a scratch file and a rename, so a crash leaves the old
    file or the new one, never part of one."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


class _MetricsLog:
    """``metrics.jsonl`` (one ``os.write`` per record) plus TensorBoard scalars."""

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self._drop_after(resume_step)
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(workdir / "tensorboard"))

    def _drop_after(self, step: int) -> None:
        # Records past the checkpoint belong to steps that will be recomputed.
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            _replace_file(self.path, "".join(kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **values}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _NoLog:
    """The metrics log of a process other than 0 (which alone writes the files)."""

    def write(self, step: int, values: dict[str, float]) -> None:
        del step, values

    def close(self) -> None:
        return None


def _agreed_stop(received: list[int], at_sync_point: bool) -> int:
    """The first stop signal any process received (0: none). Every process gets the
    same answer at the same step, so on a multi-host run all save and stop together
    even when one host alone was signalled. The processes compare signals only at
    ``at_sync_point`` steps (the logging steps): an all-gather after every step would
    make the hosts wait for each other once per step."""
    mine = received[0] if received else 0
    if jax.process_count() == 1:
        return mine
    if not at_sync_point:
        return 0
    from jax.experimental import multihost_utils

    signals = np.asarray(multihost_utils.process_allgather(np.int32(mine)))
    return int(signals[signals > 0][0]) if (signals > 0).any() else 0


class _BatchFeed:
    """Batches placed for a (possibly multi-process) mesh.

    One process: the data's NumPy batches as they are (jit places them). Several: each
    process reads only its rows of a training batch (``data.train_batch(step, rows=)``,
    effjax.train.sharding.process_rows) and the global array is assembled from the
    shares; evaluation batches, read whole by every process, are replicated.
    """

    def __init__(self, data, mesh: jax.sharding.Mesh, rules: sharding.Rules, batch_size: int):
        self.data, self.mesh, self.rules, self.batch_size = data, mesh, rules, batch_size
        self.multi = jax.process_count() > 1
        self.rows = sharding.process_rows(mesh, rules, batch_size) if self.multi else None

    def train_batch(self, step: int) -> dict:
        if not self.multi:
            return self.data.train_batch(step)
        local = self.data.train_batch(step, rows=self.rows)
        shardings = sharding.batch_shardings(local, self.mesh, self.rules)
        return sharding.global_batch(local, shardings, self.batch_size)

    def replicated(self, batch: dict) -> dict:
        if not self.multi:
            return batch
        everywhere = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return {
            k: jax.make_array_from_process_local_data(everywhere, v, np.shape(v))
            for k, v in batch.items()
        }


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Catches SIGINT/SIGTERM into a list instead of killing the process mid-step."""
    received: list[int] = []
    previous = {}

    def handler(signum, _frame):
        received.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _say(message: str) -> None:
    print(f"effjax train: {message}", file=sys.stderr, flush=True)


class _LineProgress:
    """Progress as plain lines on stderr, one per update with a status (a log interval),
    for logs and pipes, where a live bar shows nothing until the end."""

    def __init__(self, total: int, start: int):
        self.total, self.start, self.begun = total, start, time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, task, *, completed: int | None = None, status: str | None = None) -> None:
        del task
        if status is None or completed is None:
            return
        rate = (completed - self.start) / max(time.monotonic() - self.begun, 1e-9)
        _say(f"step {completed}/{self.total}  {status}  ({rate:.2f} steps/s)")


def _progress(enabled: bool, total: int, start: int):
    if enabled and not sys.stderr.isatty():
        return _LineProgress(total, start), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    task = bar.add_task("train", total=total, completed=start, status="")
    return bar, task


# ---------------------------------------------------------------- evaluation


def make_eval_step(model: nn.Module, loss_fn: LossFn = classification_loss) -> Callable:
    """``eval_step(state, batch, carried) -> (metrics, carried)`` (jitted, deterministic).

    ``carried`` is the ``"memory"`` collection from the previous batch of the same pass
    (``{}`` at the first: the model starts an empty one); the training memory in
    ``state.collections`` is left out, so evaluation starts fresh.
    """

    def eval_step(state: TrainState, batch: dict, carried: dict) -> tuple[dict, dict]:
        collections = {k: v for k, v in state.collections.items() if k != MEMORY}
        logits, mutated = forward(
            model,
            state.params,
            batch,
            train=False,
            rng=None,
            collections={**collections, **carried},
            mutable=[MEMORY],
        )
        return loss_fn(logits, batch)[1], _carried(mutated)

    return jax.jit(eval_step)


def recorded_metrics(workdir: Path) -> dict[str, float]:
    """The last recorded value of every validation and test metric in ``metrics.jsonl``."""
    path = workdir / "metrics.jsonl"
    latest: dict[str, float] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        latest.update({k: v for k, v in record.items() if k.startswith(("validation/", "test/"))})
    return latest


def evaluate(eval_step: Callable, state: TrainState, batches) -> dict[str, float]:
    """Example-weighted mean of ``eval_step``'s metrics over ``batches``, in order (the
    memory of a segment-recurrent model is carried from one batch to the next)."""
    totals: dict[str, float] = {}
    count = 0
    carried: dict = {}
    for batch in batches:
        size = len(batch["inputs"])
        metrics, carried = eval_step(state, batch, carried)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
        count += size
    return {name: total / count for name, total in totals.items()}


# ---------------------------------------------------------------- the loop


def train(
    config: ExperimentConfig,
    workdir: str | Path,
    *,
    model: nn.Module,
    data,
    loss_fn: LossFn = classification_loss,
    eval_model: nn.Module | None = None,
) -> dict[str, Any]:
    """Trains ``model`` on ``data`` per ``config``, resuming from ``workdir``'s checkpoint.

    Args:
      config: the experiment (``run`` sets steps, intervals, seed, mesh).
      workdir: where config.json, checkpoints, metrics.jsonl and tensorboard/ live.
      model: a linen module called as ``model(inputs, padding_mask, deterministic=)``
        (effjax.models.EncoderForSequenceClassification).
      data: ``train_batch(step) -> batch`` and ``eval_batches(split, limit)``
        (effjax.data.batching.ClassificationData); on a multi-process run (after
        effjax.train.distributed.initialize) also ``train_batch(step, rows=)``, the
        rows of the global batch this process loads.
      loss_fn: ``(logits, batch) -> (loss, metrics)``.
      eval_model: the module evaluation applies to the same parameters (a Transformer-XL
        decoder with a longer memory, ``DecoderConfig.eval_mem_len``); default ``model``.

    Returns:
      ``{"step", "stopped" (the signal that stopped the run, else 0), "state",
      "validation/<metric>",
      "test/<metric>"}`` (test metrics when the run completed and data has a test split).

    Raises:
      ValueError: the work directory holds another experiment or an incompatible
        checkpoint (nothing is written in that case).
    """
    workdir = Path(workdir)
    run = config.run
    check_workdir(workdir, config)

    tx = make_optimizer(config.optimizer, run.num_steps)
    mesh = sharding.make_mesh(run.mesh_data, run.mesh_model, expert=run.mesh_expert)
    rules = sharding.RULES[run.sharding]
    feed = _BatchFeed(data, mesh, rules, run.batch_size)
    example = feed.replicated(data.train_batch(0))
    abstract = jax.eval_shape(lambda b: init_state(model, tx, run.seed, b), example)
    state_sharding = sharding.state_shardings(abstract, tx, mesh, rules)

    manager = checkpoint.checkpoint_manager(
        workdir / "checkpoints", max_to_keep=run.max_checkpoints, async_save=False, create=False
    )
    try:
        if manager.latest_step() is not None:
            # Checks every name and shape against the model before reading an array.
            state = checkpoint.restore(manager, abstract, shardings=state_sharding)
        else:
            fresh = jax.jit(
                lambda b: init_state(model, tx, run.seed, b), out_shardings=state_sharding
            )
            state = fresh(example)
    except BaseException:
        manager.close()
        raise
    start = int(state.step)
    if start >= run.num_steps:  # Finished: rerunning must not log or evaluate again.
        manager.close()
        _say(f"{workdir} is complete at step {start}; nothing to do")
        return {"stopped": 0, **recorded_metrics(workdir), "step": start, "state": state}
    if start:
        _say(f"resumed from step {start} of {run.num_steps} ({workdir})")

    # Validation is over: from here on the work directory is written. Orbax writes the
    # checkpoints from every process; the other files are process 0's.
    primary = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "checkpoints").mkdir(exist_ok=True)
    if primary and not (workdir / "config.json").exists():
        _replace_file(workdir / "config.json", json.dumps(to_json(config), indent=2))
    log = _MetricsLog(workdir, start) if primary else _NoLog()

    step_fn = make_train_step(model, tx, run.seed, loss_fn, num_steps=run.num_steps)
    eval_step = make_eval_step(model if eval_model is None else eval_model, loss_fn)
    compiled: dict[Any, Callable] = {}

    def train_step(state, batch):
        shapes = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if shapes not in compiled:
            compiled[shapes] = sharding.jit_sharded(
                step_fn, state_sharding, sharding.batch_shardings(batch, mesh, rules), rules
            )
        return compiled[shapes](state, batch)

    def run_eval(split: str, limit: int | None, step: int) -> dict[str, float]:
        batches = map(feed.replicated, data.eval_batches(split, limit))
        values = evaluate(eval_step, state, batches)
        values = {f"{split}/{name}": value for name, value in values.items()}
        log.write(step, values)
        return values

    result: dict[str, Any] = {"stopped": 0}
    pending: list[dict] = []
    bar, task = _progress(run.progress and primary, run.num_steps, start)
    try:
        with _stop_requests() as stop, bar:
            for step in range(start, run.num_steps):
                state, metrics = train_step(state, feed.train_batch(step))
                pending.append(metrics)
                done = step + 1
                if done % run.log_every == 0 or done == run.num_steps:
                    means = {
                        f"train/{k}": float(np.mean([m[k] for m in pending])) for k in pending[0]
                    }
                    means["train/learning_rate"] = float(
                        make_schedule(config.optimizer, run.num_steps)(step)
                    )
                    log.write(done, means)
                    bar.update(task, completed=done, status=f"loss {means['train/loss']:.4f}")
                    pending.clear()
                if done % run.eval_every == 0 or done == run.num_steps:
                    result.update(run_eval("validation", run.eval_examples, done))
                if done % run.checkpoint_every == 0:
                    checkpoint.save(manager, done, state)
                bar.update(task, completed=done)
                stopped = _agreed_stop(stop, done % run.log_every == 0)
                if stopped:
                    checkpoint.save(manager, done, state)
                    result["stopped"] = stopped
                    name = signal.Signals(stopped).name
                    _say(f"stopped by {name} at step {done} (checkpoint saved); rerun to resume")
                    break
            else:
                checkpoint.save(manager, run.num_steps, state)
                if "test" in getattr(data, "splits", {}):
                    result.update(run_eval("test", None, run.num_steps))
    finally:
        manager.close()
        log.close()
    result["step"] = int(state.step)
    result["state"] = state
    return result
