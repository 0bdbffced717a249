"""The benchmark suite's bookkeeping: the raw-pyarrow reference's batches, target verdicts and
the "behind" list, from synthetic results (no timing here, never)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent  # holds the benchmarks package


@pytest.fixture(scope="module")
def suite(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(ROOT))
    from benchmarks.data import Ragged
    from benchmarks.suite import report, sys_pyarrow
    return report, sys_pyarrow, Ragged


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]


def test_reference_cuts_row_groups_into_views_of_the_batch_size(suite):
    _, sys_pyarrow, Ragged = suite
    n = 600
    lengths = np.arange(n) % 7
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.arange(offsets[-1], dtype=np.int32)
    whole = {"id": np.arange(n), "tokens": Ragged(flat, offsets)}
    batches = list(sys_pyarrow.cut(whole, 256))
    assert [len(b["id"]) for b in batches] == [256, 256, 88]
    assert [len(b["tokens"]) for b in batches] == [256, 256, 88]
    rows = [b["tokens"][i] for b in batches for i in range(len(b["tokens"]))]
    assert all(np.array_equal(r, flat[offsets[i]:offsets[i + 1]]) for i, r in enumerate(rows))
    assert np.shares_memory(batches[1]["id"], whole["id"])  # views, not copies


def _entry(rows_s: float, rows: int = 10_000) -> dict:
    return {"status": "ok", "rows": rows, "median_s": rows / rows_s, "rows_s": rows_s, "gb_s": 0.1}


def _record(seq: dict, skipped: tuple[str, ...] = ()) -> dict:
    res = {name: _entry(v) for name, v in seq.items()}
    res.update({name: {"status": "skipped", "reason": "not here"} for name in skipped})
    return {"results": {"tabular": {"seq": res}}, "meta": {"repeat": 3},
            "datasets": {"tabular": {"rows": 10_000, "filter_k": 100, "payload_bytes": 1, "row_nbytes": 1}},
            "extras": {"tabular": {"tsfs_rg_rows": 10_000, "tsfs_row_groups": 1}}}


def test_targets_use_the_cut_reference_and_never_compare_with_the_uncut_read(suite):
    report, _, _ = suite
    R = _record({"pyarrow": 1.0e6, "pyarrow-rg": 9.0e6, "tsfs-numpy": 0.95e6, "tsfs-torch0": 0.5e6,
                 "h5py": 0.8e6})
    got = {t["target"]: t for t in report.evaluate_targets(R)}
    numpy_raw = got["sequential read: tsfs within 0.9x of raw pyarrow (tsfs-numpy)"]
    assert numpy_raw["ratio"] == pytest.approx(0.95) and numpy_raw["met"] is True
    torch_raw = got["sequential read: tsfs within 0.9x of raw pyarrow (tsfs-torch0)"]
    assert torch_raw["ratio"] == pytest.approx(0.5) and torch_raw["met"] is False
    into_torch = got["sequential read into torch: tsfs ahead of every peer"]
    assert into_torch["other"] == "h5py" and into_torch["ratio"] == pytest.approx(0.625)
    assert into_torch["met"] is False
    assert report.behind(R) == []  # 0.95x the reference is within its 10 %; h5py is slower
    R = _record({"pyarrow": 1.0e6, "pyarrow-rg": 9.0e6, "tsfs-numpy": 0.7e6, "h5py": 0.8e6})
    (entry,) = report.behind(R)
    assert dict(entry["faster"]) == pytest.approx({"pyarrow": 1.0 / 0.7, "h5py": 0.8 / 0.7})


def test_uncut_read_is_listed_where_it_ran_and_hidden_where_skipped(suite):
    report, _, _ = suite
    R = _record({"pyarrow": 1.0e6, "pyarrow-rg": 2.0e6, "tsfs-numpy": 1.0e6})
    table = report.measure_table(R, "tabular", "seq")
    assert report.READ_LABELS["pyarrow-rg"] in table
    R = _record({"pyarrow": 1.0e6, "tsfs-numpy": 1.0e6}, skipped=("pyarrow-rg", "h5py"))
    table = report.measure_table(R, "tabular", "seq")
    assert report.READ_LABELS["pyarrow-rg"] not in table
    assert report.READ_LABELS["h5py"] in table  # other skipped systems still say why


def test_no_verdict_where_a_faster_looking_win_only_comes_from_a_failed_peer(suite):
    report, _, _ = suite
    R = _record({"pyarrow": 1.0e6, "tsfs-torch0": 1.3e6, "tfrecord": 0.2e6})
    R["results"]["tabular"]["seq"]["petastorm-batch"] = {"status": "failed", "reason": "read 0 rows"}
    (t,) = [t for t in report.evaluate_targets(R) if t["target"].startswith("sequential read into torch")]
    assert t["ratio"] == pytest.approx(6.5) and t["met"] is None and t["failed"] == ["petastorm-batch"]
    R["results"]["tabular"]["seq"]["tsfs-torch0"] = _entry(0.1e6)  # behind a peer that ran: a miss all the same
    (t,) = [t for t in report.evaluate_targets(R) if t["target"].startswith("sequential read into torch")]
    assert t["met"] is False


def test_flat_torch_batches_are_consumed_as_rows(suite):
    # the suite's tsfs-torch0-flat reader hands the consumer values + offsets as rows (Ragged):
    # row counts come from the offsets, and a batch whose offsets disagree with its ids is caught
    torch = pytest.importorskip("torch")
    from benchmarks.suite import sys_tsfs

    eat = sys_tsfs._flat_consumer(["tokens"])
    batch = {"id": torch.arange(3), "tokens": torch.arange(6, dtype=torch.int32),
             "tokens__offsets": torch.tensor([0, 1, 1, 6]), "tokens__shape": torch.tensor([[1], [0], [5]])}
    out = eat([batch], {"id": "id", "tokens": "tokens"})
    assert out.rows == 3 and out.batches == 1
    bad = dict(batch, **{"tokens__offsets": torch.tensor([0, 6])})
    with pytest.raises(AssertionError, match="tokens"):
        eat([bad], {"id": "id", "tokens": "tokens"})


def _mapped_rss_kib(path: str) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                inside = line.rstrip("\n").endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
def test_consumers_read_every_page_of_a_mapped_batch(suite, tmp_path):
    # a batch that is a view of a memory-mapped file has cost nothing until its pages are read:
    # the consumers read one byte of every 4 KiB, so every page is faulted in (one element a
    # column, the old consumer, faulted in one page)
    from benchmarks.consume import PAGE_BYTES, touch, touch_pages

    a = np.zeros(10 * PAGE_BYTES + 7, np.uint8)
    a[::PAGE_BYTES] = 1
    assert touch_pages(a) == 11
    assert touch_pages(a.view(np.uint8)[:0]) == 0
    path = tmp_path / "pages"
    pages = 4096  # 16 MiB
    path.write_bytes(bytes(range(256)) * (pages * PAGE_BYTES // 256))
    mapped = np.memmap(path, dtype=np.float32, mode="r").reshape(pages, -1)  # a row a page
    assert _mapped_rss_kib(str(path)) == 0
    touch(mapped[:1])
    # one page, and what the kernel maps around it: 64 KiB (fault-around) or a 2 MiB huge page (tmpfs)
    assert _mapped_rss_kib(str(path)) <= 2048
    touch(mapped)
    assert _mapped_rss_kib(str(path)) == pages * PAGE_BYTES // 1024


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
def test_flat_ragged_batches_read_their_own_rows_only(suite, tmp_path):
    # a batch of flat ragged rows may share a whole read's values with the batches after it: the
    # consumer reads the batch's own range (reading all of it each batch had charged readers that
    # decode a read at once, tsfs and the raw reference, once per batch for the whole read)
    from benchmarks.consume import PAGE_BYTES, touch
    from benchmarks.data import Ragged

    pages = 4096  # 16 MiB; 1 KiB a row
    path = tmp_path / "values"
    path.write_bytes(bytes(pages * PAGE_BYTES))
    flat = np.memmap(path, dtype=np.int32, mode="r")
    offsets = np.arange(0, len(flat) + 1, 256)  # rows of 256 values
    batch = Ragged(flat, offsets[8192:8192 + 1024 + 1])  # 1,024 rows (1 MiB) from the 8 MiB mark on
    touch(batch)
    kib = _mapped_rss_kib(str(path))
    assert 1024 <= kib <= 1024 + 2 * 2048  # its MiB (and at most a huge page either side), not 16 MiB


def test_every_kind_of_batch_column_is_read(suite):
    from benchmarks.consume import PAGE_BYTES, touch
    from benchmarks.data import Ragged

    torch = pytest.importorskip("torch")
    values = np.ones(3 * PAGE_BYTES, np.uint8)
    columns = [values, torch.from_numpy(values), Ragged(values, np.array([0, 5, len(values)])),
               [values[:5], values[5:]], np.array([values[:5], values[5:]], dtype=object),
               torch.nested.nested_tensor([torch.ones(3), torch.ones(5)], layout=torch.jagged)]
    for column in columns:
        touch(column)
    with pytest.raises(TypeError, match="cannot touch"):
        touch({"not": "a column"})
