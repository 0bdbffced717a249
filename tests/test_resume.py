"""Resume arithmetic without I/O (tensorstore_fs.read.resume): rolling a pass's count over epochs."""

from __future__ import annotations

import numpy as np
import pytest

from tensorstore_fs.plan import EpochPlan, PlanSpec, Segment
from tensorstore_fs.read.resume import batches_left, roll_over


@pytest.mark.parametrize("counts,batch_size,world_size", [([5, 7, 3], 2, 1), ([40, 1, 9, 30], 4, 3), ([6], 7, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_roll_over_counts_whole_epochs_then_the_rest(counts, batch_size, world_size, shuffle):
    spec = PlanSpec(batch_size, shuffle=shuffle, seed=3)
    counts = np.asarray(counts)
    for rank in range(world_size):
        per_epoch = [EpochPlan(counts, spec, e, world_size).num_batches(rank) for e in range(4, 8)]
        for consumed in range(sum(per_epoch[:3]) + 1):
            epoch, history, rest = roll_over(counts, spec, 4, world_size, (), rank, consumed)
            done = epoch - 4
            assert sum(per_epoch[:done]) + rest == consumed
            assert history == () or done == 0
            assert 0 <= rest < max(1, per_epoch[done]) or (rest == 0 and per_epoch[done] == 0)


def test_roll_over_starts_from_an_interrupted_epoch():
    spec, counts = PlanSpec(2), np.asarray([10, 10])
    history = (Segment(1, 1, 3),)  # 3 of the epoch's batches were taken before this pass
    left = batches_left(counts, spec, 0, 1, history, 0)
    assert left == 10 - 3
    assert roll_over(counts, spec, 0, 1, history, 0, 2) == (0, history, 2)
    assert roll_over(counts, spec, 0, 1, history, 0, left) == (1, (), 0)
    assert roll_over(counts, spec, 0, 1, history, 0, left + 4) == (1, (), 4)
