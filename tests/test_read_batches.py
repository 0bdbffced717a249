"""read_batches: exact batch sizes across row groups, also if pyarrow ignored size changes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_fs.parquet.batches import read_batches


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rb") / "x.parquet"
    pq.write_table(pa.table({"a": np.arange(10000)}), str(path), row_group_size=2519)
    return pq.ParquetFile(str(path))


def _expected(sizes, then, total):
    out, left = [], total
    for s in list(sizes) + [then] * total:
        if left <= 0:
            break
        out.append(min(s, left))
        left -= out[-1]
    return out


class _IgnoresSizeChanges:
    """A ParquetFile whose reader ignores set_batch_size (the fallback path)."""

    def __init__(self, pf):
        self.pf = pf
        self.reader = type("Reader", (), {"set_batch_size": lambda self, n: None})()

    def iter_batches(self, **kwargs):
        return self.pf.iter_batches(**kwargs)


@pytest.mark.parametrize("ignore", [False, True], ids=["pyarrow", "fallback"])
def test_exact_sizes_and_values(parquet_file, ignore):
    pf = _IgnoresSizeChanges(parquet_file) if ignore else parquet_file
    rng = np.random.default_rng(1)
    for _ in range(60):
        sizes = [int(x) for x in rng.integers(1, 3000, rng.integers(0, 6))]
        then = int(rng.integers(1, 4000))
        out = list(read_batches(pf, [0, 1, 2, 3], ["a"], sizes, then))
        assert [b.num_rows for b in out] == _expected(sizes, then, 10000)
        assert np.array_equal(np.concatenate([b.column(0).to_numpy() for b in out]), np.arange(10000))


def test_subset_of_row_groups(parquet_file):
    out = list(read_batches(parquet_file, [1, 3], ["a"], [5], 1000))
    vals = np.concatenate([b.column(0).to_numpy() for b in out])
    assert np.array_equal(vals, np.r_[2519:5038, 7557:10000])


def test_to_batches_maps_plain_tensor_pages_privately(tmp_path, monkeypatch):
    # Dataset.to_batches on a local dataset takes fixed-shape tensor columns straight from the
    # file's pages (private copy-on-write maps; float values at unaligned offsets get one
    # aligning copy): values exact, batches spanning row groups joined, every array writable,
    # and a write never reaches another batch, the file or a later read
    import tensorstore_fs as tsfs
    import tensorstore_fs.parquet.rowgroups as rowgroups

    n = 2000
    ids = np.arange(n)
    cols = {"id": ids, "image": (ids[:, None, None] + np.arange(12).reshape(3, 4)).astype(np.uint8),
            "emb": (ids[:, None] * 0.5 + np.arange(5)).astype(np.float32),
            "opt": [None if i % 9 == 0 else np.full(2, i, np.float32) for i in ids]}
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", (3, 4)),
                          tsfs.Field("emb", "float32", (5,)), tsfs.Field("opt", "float32", (2,), nullable=True)])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), cols, schema, row_group_bytes=20_000, shard_bytes=60_000)
    maps = []
    real = rowgroups.private_view
    monkeypatch.setattr(rowgroups, "private_view", lambda *a: maps.append(a) or real(*a))
    for bs in (7, 300):
        batches = list(ds.to_batches(batch_size=bs))
        assert maps, "the mapped path was not taken"
        got = {k: np.concatenate([b[k] for b in batches]) for k in ("id", "image", "emb")}
        assert np.array_equal(got["id"], ids)
        assert np.array_equal(got["image"], cols["image"]) and np.array_equal(got["emb"], cols["emb"])
        opt = np.ma.concatenate([b["opt"] for b in batches])
        assert np.array_equal(opt.mask.any(axis=1), ids % 9 == 0)
        assert np.array_equal(opt[ids % 9 != 0].data[:, 0], ids[ids % 9 != 0].astype(np.float32))
        for b in batches:
            assert b["image"].flags.writeable and b["emb"].flags.writeable and b["emb"].flags.aligned
            b["image"] += 1
            b["emb"] *= 0
        for b in batches:
            first = int(b["id"][0])
            assert np.array_equal(b["image"], cols["image"][first:first + len(b["id"])] + 1)
        again = {k: np.concatenate([b[k] for b in ds.to_batches(batch_size=bs)]) for k in ("image", "emb")}
        assert np.array_equal(again["image"], cols["image"]) and np.array_equal(again["emb"], cols["emb"])
    ds.verify()  # the shard files are untouched (raises on a checksum mismatch)


def test_to_batches_with_row_groups_that_cannot_be_mapped(tmp_path, monkeypatch):
    # a shard whose later row groups store a tensor column otherwise (another writer, several
    # pages): those row groups decode that column, the others keep their maps; values exact
    import tensorstore_fs as tsfs
    import tensorstore_fs.parquet.rowgroups as rowgroups

    n = 3000
    ids = np.arange(n)
    image = (ids[:, None] % 251 + np.arange(48)).astype(np.uint8).reshape(n, 3, 4, 4)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": ids, "image": image}, row_group_bytes=20_000)
    assert len(ds.row_groups) > 4 and len(ds.shards) == 1
    real = rowgroups.plain_values_offset
    calls = []

    def every_other(read_at, column, rows, nbytes):
        calls.append(1)
        return real(read_at, column, rows, nbytes) if len(calls) % 2 else None

    monkeypatch.setattr(rowgroups, "plain_values_offset", every_other)
    batches = list(ds.to_batches(batch_size=64))
    assert len(calls) > 2
    np.testing.assert_array_equal(np.concatenate([b["id"] for b in batches]), ids)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), image)


def test_rows_hint_is_validated_and_changes_no_rows(tmp_path):
    import tensorstore_fs as tsfs
    from tensorstore_fs.errors import InvalidArgumentError
    from tensorstore_fs.read import ReadOptions
    from tensorstore_fs.read.scan import Scanner

    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(5000)}, row_group_bytes=8000)
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(InvalidArgumentError, match="rows_hint"):
            Scanner(ds.storage, ds.manifest, ReadOptions(), rows_hint=bad)
    hinted = Scanner(ds.storage, ds.manifest, ReadOptions(batch_size=700), rows_hint=10)
    assert np.array_equal(np.concatenate([b["id"] for b in hinted]), np.arange(5000))
    assert np.array_equal(ds.head(3)["id"], [0, 1, 2])


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, np.ma.MaskedArray) or isinstance(b, np.ma.MaskedArray):
        return (np.array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
                and np.array_equal(np.ma.filled(a, 0), np.ma.filled(b, 0)))
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _decoded_one_by_one(scanner):
    """The reference: every matching row in storage layout, cut into batches, each decoded on its own."""
    import pyarrow as pa

    from tensorstore_fs.encoding import decode_column

    tables = list(scanner.row_group_tables())
    if not tables:
        return []
    table = pa.concat_tables(tables)
    out = []
    for start in range(0, table.num_rows, scanner.batch_size):
        t = table.slice(start, scanner.batch_size)
        if scanner.drop_last and t.num_rows < scanner.batch_size:
            break
        batch = {}
        for f in (scanner.schema.field(c) for c in scanner.columns):
            batch.update(decode_column(t, f, pad=scanner.variable == "pad", flat=scanner.variable == "flat"))
        out.append(batch)
    return out


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filter"])
def test_batches_cut_from_one_decode_equal_batches_decoded_one_by_one(tmp_path, filtered):
    # Scanner.__iter__ decodes the rest of a table read once and slices later batches from it;
    # every batch must equal decoding that batch's own rows (_decoded_one_by_one), whatever the
    # batch size, shard boundaries, nulls, strings, variable-shape rows or drop_last
    import pyarrow.compute as pc

    import tensorstore_fs as tsfs
    from tensorstore_fs.read import ReadOptions
    from tensorstore_fs.read.scan import Scanner

    n = 3000
    ids = np.arange(n)
    rng = np.random.default_rng(5)
    cols = {"id": ids, "label": (ids % 7).astype(np.int32),
            "score": [None if i % 11 == 0 else float(i) / 3 for i in ids],
            "name": [None if i % 13 == 0 else f"row{i}" for i in ids],
            "vec": (ids[:, None] + np.arange(4)).astype(np.float32),
            "tokens": [np.arange(int(rng.integers(0, 9)), dtype=np.int32) + i for i in ids],
            "boxes": [None if i % 17 == 0 else np.full((int(rng.integers(0, 4)), 2), i, np.float32) for i in ids]}
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("label", "int32"),
                          tsfs.Field("score", "float64", nullable=True), tsfs.Field("name", "string", nullable=True),
                          tsfs.Field("vec", "float32", (4,)), tsfs.Field("tokens", "int32", (None,)),
                          tsfs.Field("boxes", "float32", (None, 2), nullable=True)])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), cols, schema, row_group_bytes=12_000, shard_bytes=40_000)
    assert len(ds.shards) > 1 and len(ds.row_groups) > len(ds.shards)
    flt = (pc.field("label") != 3) if filtered else None
    for bs in (1, 5, 64, 333, 5000):
        for drop_last in (False, True):
            def scanner(variable="list"):
                return Scanner(ds.storage, ds.manifest, ReadOptions(batch_size=bs, drop_last=drop_last, filter=flt,
                                                                    variable=variable))
            one_by_one = _decoded_one_by_one(scanner())
            cut = list(scanner())
            assert len(cut) == len(one_by_one)
            for got, want in zip(cut, one_by_one):
                assert list(got) == list(want)
                for k in want:
                    assert _same(got[k], want[k]), (bs, drop_last, k)
            # variable="flat": the same rows as RaggedRows views of the same decoded values
            flat = list(scanner("flat"))
            assert len(flat) == len(one_by_one)
            for got, want in zip(flat, one_by_one):
                for k in ("tokens", "boxes"):
                    assert isinstance(got[k], tsfs.RaggedRows) and len(got[k]) == len(want[k])
                    assert _same(got[k].to_list(), want[k]), (bs, drop_last, k)
                    live = [r for r in want[k] if r is not None]
                    assert np.array_equal(got[k].lengths, [0 if r is None else r.size for r in want[k]])
                    values = got[k].values[got[k].offsets[0]:got[k].offsets[-1]]
                    assert np.array_equal(values, np.concatenate([r.reshape(-1) for r in live]) if live else [])
            # variable="pad": decoded flat once, padded per batch; equal to padding each batch's own decode
            one_by_one_padded = _decoded_one_by_one(scanner("pad"))
            cut_padded = list(scanner("pad"))
            assert len(cut_padded) == len(one_by_one_padded)
            for got, want in zip(cut_padded, one_by_one_padded):
                assert list(got) == list(want)
                for k in want:
                    assert _same(got[k], want[k]), ("pad", bs, drop_last, k)
            kept = ids[ids % 7 != 3] if filtered else ids
            rows = np.concatenate([b["id"] for b in cut]) if cut else np.zeros(0, np.int64)
            assert np.array_equal(rows, kept[:len(kept) // bs * bs] if drop_last else kept)


def test_bytes_read_count_fields_with_dots_in_their_names(tmp_path):
    # stats.bytes_read sums the stored bytes of the leaves a scan reads; a field named "a.b" is
    # one leaf of its own (not a leaf "b" inside a field "a")
    import tensorstore_fs as tsfs

    n = 2000
    schema = tsfs.Schema([tsfs.Field("a.b", "int64"), tsfs.Field("img.x", "uint8", (16,)),
                          tsfs.Field("toks.t", "int32", (None,))])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"a.b": np.arange(n), "img.x": np.zeros((n, 16), np.uint8),
                                                   "toks.t": [np.arange(i % 5, dtype=np.int32) for i in range(n)]},
                            schema)
    meta = pq.ParquetFile(ds.files[0]).metadata
    leaf = {meta.row_group(0).column(i).path_in_schema: i for i in range(meta.num_columns)}
    for cols, leaves in ((["a.b"], ["a.b"]), (["img.x"], ["img.x"]),
                         (["toks.t"], [p for p in leaf if p.startswith("toks.t") or p.startswith("__shape__toks.t")])):
        sc = ds.scanner(columns=cols)
        rows = sum(len(b[cols[0]]) for b in sc)
        want = sum(meta.row_group(g).column(leaf[p]).total_compressed_size
                   for g in range(meta.num_row_groups) for p in leaves)
        assert rows == n and sc.stats.bytes_read == want, cols
