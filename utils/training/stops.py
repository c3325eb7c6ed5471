"""Why a training run stops early: signals, the time budget (agreed by all workers) and a collapse."""
from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, Self

import tensorflow as tf

COLLAPSE_DISTANCE = 0.01  # mean squared distance between a batch's unit embeddings (random: ~2)
COLLAPSE_ACTIVE = 0.99


class StopSignals:
    """While active, SIGINT and SIGTERM set ``received`` instead of killing the process."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_stop_vote(strategy: tf.distribute.Strategy) -> Callable[[bool, bool], tuple[bool, bool]]:
    """``vote(out_of_time, signalled)`` -> whether any replica of any worker is out of time, and
    whether any was signalled.

    A collective (a sum over replicas, like the gradients'): every worker calls it at the same
    point of the loop and all get the same answer, so all stop after the same step and none is
    left waiting in an all-reduce for the others.
    """

    @tf.function
    def total(flags: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(flags,)), axis=None)

    def vote(out_of_time: bool, signalled: bool) -> tuple[bool, bool]:
        counts = total(tf.constant([float(out_of_time), float(signalled)])).numpy()
        return bool(counts[0] > 0), bool(counts[1] > 0)

    return vote


class CollapseDetector:
    """Flags a run whose batch embeddings sit at one point with every triplet active, step after step."""

    def __init__(self, patience: int):
        self.patience = patience
        self.count = 0

    def update(self, mean_distance: float, active: float) -> bool:
        collapsed = mean_distance < COLLAPSE_DISTANCE and active >= COLLAPSE_ACTIVE
        self.count = self.count + 1 if collapsed else 0
        return self.patience > 0 and self.count >= self.patience
