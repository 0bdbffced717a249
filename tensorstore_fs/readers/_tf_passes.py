"""One pass number per ``tf.data`` iterator, handed to every plan worker of that iterator.

A pass (one iterator of the reader's ``tf.data.Dataset``) may end anywhere: read to its end,
dropped after ``len(reader)`` batches, or broken off before some plan workers even started. Each
worker counting its own passes would then disagree with the others on the next pass's epoch, so
the number is taken once, when the iterator starts, and passed to all of them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import tensorflow as tf

__all__ = ["count_from", "per_iterator"]


def per_iterator(begin_pass: Callable[[], int], worker_dataset: Callable[[Any, tf.Tensor], tf.data.Dataset],
                 num_workers: int) -> tf.data.Dataset:
    """The batches of ``worker_dataset(w, n)`` for plan workers ``w`` interleaved round-robin
    (as a PyTorch DataLoader does), with ``n = begin_pass()`` called once (in a ``py_function``)
    each time an iterator of the result asks for its first element."""

    @tf.autograph.experimental.do_not_convert
    def begin(_: tf.Tensor) -> tf.Tensor:
        n = tf.py_function(begin_pass, [], tf.int64)
        n.set_shape(())
        return n

    @tf.autograph.experimental.do_not_convert
    def one_pass(n: tf.Tensor) -> tf.data.Dataset:
        if num_workers == 1:
            return worker_dataset(tf.constant(0, tf.int64), n)
        return tf.data.Dataset.range(num_workers).interleave(
            lambda w: worker_dataset(w, n), cycle_length=num_workers, block_length=1,
            num_parallel_calls=num_workers, deterministic=True)

    return tf.data.Dataset.range(1).map(begin).flat_map(one_pass)


def count_from(start: int) -> Iterator[int]:
    while True:
        yield start
        start += 1
