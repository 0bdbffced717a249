"""World: validation, and detection from arguments, the environment, torch.distributed and inside DataLoader workers."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.world import World


@pytest.fixture(autouse=True)
def no_dist_env(monkeypatch):
    """Tests start from a clean launcher environment."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


# -- validation -------------------------------------------------------------------------------------

def test_defaults_and_fields():
    assert World() == World(0, 1)
    w = World(rank=3, world_size=8)
    assert (w.rank, w.world_size) == (3, 8)
    assert w == World(3, 8) and hash(w) == hash(World(3, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.rank = 0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,match", [
    (dict(world_size=0), r"world_size must be a positive int, got 0"),
    (dict(world_size=-4), r"world_size must be a positive int, got -4"),
    (dict(rank=-1, world_size=2), r"rank must be a non-negative int, got -1"),
    (dict(rank=2, world_size=2), r"rank must be < world_size \(2\), got 2"),
    (dict(rank=9, world_size=4), r"rank must be < world_size \(4\), got 9"),
    (dict(rank=True, world_size=2), r"rank must be a non-negative int, got True"),
    (dict(rank=1.0, world_size=2), r"rank must be a non-negative int, got 1.0"),
    (dict(rank="0"), r"rank must be a non-negative int, got '0'"),
    (dict(world_size=None), r"world_size must be a positive int, got None"),
])
def test_invalid_world(kwargs, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        World(**kwargs)


# -- detection --------------------------------------------------------------------------------------

def test_detect_default_is_single_process():
    assert World.detect() == World(0, 1)


def test_detect_without_torch_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert World.detect() == World(0, 1)
    assert World.detect(2, 3) == World(2, 3)


def test_detect_explicit_arguments():
    assert World.detect(rank=3, world_size=8) == World(3, 8)
    assert World.detect(0, 1) == World(0, 1)


def test_detect_arguments_win_over_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert World.detect(rank=5, world_size=6) == World(5, 6)


@pytest.mark.parametrize("kwargs", [dict(rank=1), dict(world_size=4), dict(rank=0, world_size=None),
                                    dict(rank=None, world_size=2)])
def test_detect_needs_both_or_neither(kwargs):
    with pytest.raises(tsfs.InvalidArgumentError, match=r"pass both rank= and world_size=, or neither"):
        World.detect(**kwargs)


@pytest.mark.parametrize("rank,world_size,match", [
    (2, 2, r"rank must be < world_size \(2\), got 2"),
    (-1, 2, r"rank must be a non-negative int, got -1"),
    (0, 0, r"world_size must be a positive int, got 0"),
    (0.0, 1, r"rank must be a non-negative int, got 0.0"),
])
def test_detect_invalid_arguments(rank, world_size, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        World.detect(rank, world_size)


def test_detect_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert World.detect() == World(3, 4)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert World.detect() == World(0, 1)


@pytest.mark.parametrize("rank,world_size,match", [
    ("x", "4", r"RANK='x' / WORLD_SIZE='4' are not integers"),
    ("1", "four", r"RANK='1' / WORLD_SIZE='four' are not integers"),
    ("", "2", r"RANK='' / WORLD_SIZE='2' are not integers"),
    ("1.0", "2", r"are not integers"),
    ("4", "4", r"rank must be < world_size \(4\), got 4"),
    ("-1", "4", r"rank must be a non-negative int, got -1"),
    ("0", "0", r"world_size must be a positive int, got 0"),
])
def test_detect_bad_env(monkeypatch, rank, world_size, match):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        World.detect()


def test_detect_from_torch_distributed(monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 5)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 7)
    assert World.detect() == World(5, 7)
    monkeypatch.setenv("RANK", "1")  # the launcher's environment comes first
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert World.detect() == World(1, 2)
    assert World.detect(0, 3) == World(0, 3)  # and explicit arguments before both


# -- inside DataLoader workers ----------------------------------------------------------------------

def _world_dataset():
    torch = pytest.importorskip("torch")
    from torch.utils.data import IterableDataset

    class WorldFields(IterableDataset):
        def __iter__(self):
            w = World.detect()
            yield torch.tensor([w.rank, w.world_size])

    return torch, WorldFields()


def test_detect_in_dataloader_workers(monkeypatch):
    torch, ds = _world_dataset()
    from torch.utils.data import DataLoader

    monkeypatch.setenv("RANK", "1")  # inherited by the workers
    monkeypatch.setenv("WORLD_SIZE", "3")
    seen = [tuple(t.tolist()) for t in DataLoader(ds, batch_size=None, num_workers=2)]
    assert seen == [(1, 3), (1, 3)]  # every worker of the rank sees the rank's world
    assert [tuple(t.tolist()) for t in DataLoader(ds, batch_size=None, num_workers=0)] == [(1, 3)]
