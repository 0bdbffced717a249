"""Resume arithmetic, no I/O: the saved state of a reader, and what each worker reads to continue.

A state is a few numbers (dataset version, plan spec, epoch, and the interrupted segments of the
epoch: world size, worker count and batches consumed in each). From it the plan of the rest of the
epoch is recomputed: exactly the interrupted plan where the world and worker count are unchanged,
a fresh plan of the rows not consumed yet otherwise (:class:`~tensorstore_fs.plan.EpochPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..plan import EpochPlan, PlanSpec, Segment

__all__ = ["STATE_FORMAT", "STATE_VERSION", "StreamState", "batches_left", "resume_plan", "roll_over"]

STATE_FORMAT = "tensorstore_fs.stream_state"
STATE_VERSION = 2  # 2: shuffled epochs permute row ranges inside row groups (plan.split_units)


def resume_plan(counts: np.ndarray, spec: PlanSpec, epoch: int, world_size: int, history: Sequence[Segment],
                rank: int, worker: int, num_workers: int) -> tuple[EpochPlan, int, int, tuple[Segment, ...]]:
    """``(plan, plan worker, batches to skip, history)``: what DataLoader worker ``worker`` reads
    to continue ``epoch`` of a read whose eligible rows per row group are ``counts``.

    If the last interruption happened with the same world size and worker count, the plan it
    interrupted continues exactly — same rows, same order as an uninterrupted run. The
    DataLoader restarts its round-robin at worker 0, so worker ``i`` takes over the stream of
    plan worker ``(next + i) % num_workers``, where ``next`` is the worker whose batch was due,
    and skips what that stream already delivered; the last segment is folded back into the
    progress count. Otherwise the rest of the epoch is re-planned over the rows not consumed.
    """
    history = tuple(history)
    if history and history[-1].world_size == world_size and history[-1].num_workers == num_workers:
        base_history = history[:-1]
        base = EpochPlan(counts, spec, epoch, world_size, base_history)
        order = base.loader_batches(rank, num_workers)
        k = min(history[-1].consumed_batches, len(order))
        nxt = order[k][0] if k < len(order) else 0
        source = (nxt + worker) % num_workers
        return base, source, sum(1 for w, _ in order[:k] if w == source), base_history
    return EpochPlan(counts, spec, epoch, world_size, history), worker, 0, history


def batches_left(counts: np.ndarray, spec: PlanSpec, epoch: int, world_size: int, history: Sequence[Segment],
                 rank: int) -> int:
    """Batches ``rank`` still reads in ``epoch`` after the interrupted segments ``history``."""
    history = tuple(history)
    if history and history[-1].world_size == world_size:  # continued exactly (see resume_plan)
        plan = EpochPlan(counts, spec, epoch, world_size, history[:-1])
        return max(0, plan.num_batches(rank) - history[-1].consumed_batches)
    return EpochPlan(counts, spec, epoch, world_size, history).num_batches(rank)


def roll_over(counts: np.ndarray, spec: PlanSpec, epoch: int, world_size: int, history: Sequence[Segment],
              rank: int, consumed_batches: int) -> tuple[int, tuple[Segment, ...], int]:
    """``(epoch, history, consumed)`` after ``consumed_batches`` were taken from a pass that started
    at ``epoch`` after ``history`` and runs on through later epochs: the epochs it completed are
    skipped, and the count is what was taken of the epoch it stopped in."""
    history = tuple(history)
    for _ in range(consumed_batches + 1):
        left = batches_left(counts, spec, epoch, world_size, history, rank)
        if consumed_batches == 0 or consumed_batches < left:
            break
        consumed_batches -= left
        epoch, history = epoch + 1, ()
    return epoch, history, consumed_batches


@dataclass(frozen=True)
class StreamState:
    """A parsed resume state (see ``TorchDataset.state_dict``; the tf.data reader shares it).

    ``history`` holds the interrupted segments of ``epoch``; a worker-level state (saved inside a
    DataLoader worker) also has ``worker``, ``worker_batches`` and ``plan_worker``.
    """

    epoch: int
    history: tuple[Segment, ...]
    world_size: int
    num_workers: int
    worker: int | None = None
    worker_batches: int = 0
    plan_worker: int | None = None

    @staticmethod
    def rank_dict(dataset_version: int, spec: PlanSpec, epoch: int, history: Sequence[Segment],
                  world_size: int, num_workers: int, consumed_batches: int) -> dict[str, Any]:
        """The JSON-ready rank-level state: ``consumed_batches`` of ``epoch`` after ``history``."""
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "dataset_version": dataset_version,
            "spec": spec.to_dict(),
            "epoch": epoch,
            "history": [[s.world_size, s.num_workers, s.consumed_batches] for s in history],
            "world_size": world_size,
            "num_workers": max(1, num_workers),
            "consumed_batches": consumed_batches,
        }

    @staticmethod
    def fold(history: Sequence[Segment], world_size: int, num_workers: int,
             consumed_batches: int) -> tuple[tuple[Segment, ...], int]:
        """``(history, consumed)`` to save when ``consumed_batches`` were taken since resuming from
        ``history``: a last segment of the same world and worker count was continued exactly (see
        :func:`resume_plan`), so its batches and the new ones are one count of the
        same plan; any other history is kept as it is."""
        history = tuple(history)
        if history and history[-1].world_size == world_size and history[-1].num_workers == num_workers:
            return history[:-1], history[-1].consumed_batches + consumed_batches
        return history, consumed_batches

    @classmethod
    def parse(cls, state: Any, dataset_version: int, spec: PlanSpec) -> "StreamState":
        """Validate a saved state against the reader's dataset version and plan spec.

        A rank-level state's progress is folded into ``history`` as one more segment.

        Raises
        ------
        InvalidArgumentError
            Not a stream state, another format version, another dataset version or plan spec,
            or malformed fields.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InvalidArgumentError("not a tensorstore_fs stream state")
        if state.get("format_version") != STATE_VERSION:
            raise InvalidArgumentError(f"stream state format_version {state.get('format_version')!r} is not supported")
        try:
            if state["dataset_version"] != dataset_version:
                raise InvalidArgumentError(
                    f"state was saved on dataset version {state['dataset_version']}, this reader has version "
                    f"{dataset_version}: open the dataset with version={state['dataset_version']}"
                )
            saved = PlanSpec(**state["spec"])
            if saved != spec:
                raise InvalidArgumentError(f"state was saved with {saved}, this reader uses {spec}")
            history = tuple(Segment(*h) for h in state["history"])
            epoch = _state_int(state, "epoch", 0)
            world_size, num_workers = _state_int(state, "world_size", 1), _state_int(state, "num_workers", 1)
            if "worker" in state:
                worker = _state_int(state, "worker", 0)
                plan_worker = _state_int(state, "plan_worker", 0) if "plan_worker" in state else worker
                return cls(epoch, history, world_size, num_workers, worker,
                           _state_int(state, "worker_batches", 0), plan_worker)
            consumed = _state_int(state, "consumed_batches", 0)
            if consumed:  # a segment that consumed nothing changes nothing (and must not reshuffle the rest)
                history += (Segment(world_size, num_workers, consumed),)
            return cls(epoch, history, world_size, num_workers)
        except InvalidArgumentError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"malformed tensorstore_fs stream state ({type(e).__name__}: {e})") from None


def _state_int(state: dict[str, Any], key: str, minimum: int) -> int:
    return check_int(repr(key), state[key], minimum, where="stream state ")
