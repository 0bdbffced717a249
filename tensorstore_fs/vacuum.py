"""Removing what no retained version needs: orphans of killed writers and old versions.

A dataset directory accumulates files no reader will ever open: shard files of writers that were
killed before they committed (their names are in no manifest), temporary files of interrupted
commits, and the shard files of versions replaced by ``mode="overwrite"``. :func:`vacuum` deletes
them (docs/format.md, "What vacuum may delete"; docs/guarantees.md, "Vacuum"):

* a file is deleted only if it is in the library's own layout (``data/part-<writer>-<seq>.parquet``,
  ``_tsfs/*.tmp-<hex>``, ``_tsfs/manifest-<v>.json`` of a version not retained); anything else
  under the root is left alone and reported as foreign;
* a shard file is deleted only if no retained version names it, it is older than ``older_than``
  and no other file of its writer is younger (a writer that is still writing keeps all its files);
* versions: the newest ``retain_versions`` are kept (all when None), and so is any older version
  superseded less than ``older_than`` ago (a reader may still be reading it). The manifests of the
  other versions are deleted *before* their shard files, so an interruption never leaves a
  manifest naming a missing file. ``_tsfs/_latest`` is rewritten (durably on a local disk) before
  any manifest is deleted, so the newest version stays openable without its ancestors.

:func:`library_orphans_only` tells the writer whether a directory with no committed manifest holds
nothing but such leftovers (it is then treated as empty: a killed first write does not block the
next one).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ._progress import progress_bar
from .errors import DatasetNotFoundError, InvalidArgumentError
from .manifest import LATEST, META_DIR, SHARD_DIR, Manifest, latest_version, load_manifest
from .storage import Storage

__all__ = ["DEFAULT_OLDER_THAN_S", "fsync_dir", "RemovedFile", "VacuumReport", "vacuum", "library_orphans_only",
           "parse_duration"]

logger = logging.getLogger(__name__)

DEFAULT_OLDER_THAN_S = 3600.0  # a file younger than this is never deleted (a writer may be writing it)

_SHARD_RE = re.compile(rf"^{SHARD_DIR}/part-(?P<writer>[0-9a-f]+)-\d+\.parquet$")
_TEMP_RE = re.compile(rf"^{META_DIR}/(manifest-\d{{10}}\.json|_latest)\.tmp-[0-9a-f]+$")
_MANIFEST_RE = re.compile(rf"^{META_DIR}/manifest-(?P<v>\d{{10}})\.json$")


@dataclass(frozen=True)
class RemovedFile:
    """One file :func:`vacuum` deleted (or, in a dry run, would delete).

    Attributes
    ----------
    path : str
        Relative to the dataset root (``data/part-....parquet``, ``_tsfs/manifest-....json``).
    bytes : int
        Its size.
    reason : str
        ``"orphan"`` (a shard no version ever named: a killed or failed writer), ``"old-version"``
        (a shard only versions no longer retained named), ``"manifest"`` (the manifest of a version
        not retained), ``"temp"`` (a temporary file of an interrupted commit).
    """

    path: str
    bytes: int
    reason: str

    def __post_init__(self) -> None:
        if self.reason not in ("orphan", "old-version", "manifest", "temp"):
            raise InvalidArgumentError(f"RemovedFile reason must be orphan|old-version|manifest|temp, got {self.reason!r}")
        if self.bytes < 0:
            raise InvalidArgumentError(f"RemovedFile bytes must be >= 0, got {self.bytes}")


@dataclass(frozen=True)
class VacuumReport:
    """What :func:`vacuum` removed (or would remove, with ``dry_run``).

    Attributes
    ----------
    url : str
    dry_run : bool
        Nothing was deleted.
    latest_version : int or None
        The newest committed version (None: the directory held only orphans of the library).
    retained_versions : tuple of int
        Versions that stay openable.
    removed_versions : tuple of int
        Versions whose manifests were deleted: ``open_dataset(url, version=v)`` raises
        ``DatasetNotFoundError`` for them.
    removed : tuple of RemovedFile
    kept_recent : tuple of str
        Unreferenced files in the library's layout kept because they (or another file of their
        writer) are younger than ``older_than``.
    foreign : tuple of str
        Files under the root that are not in the library's layout: never touched.
    """

    url: str
    dry_run: bool
    latest_version: int | None
    retained_versions: tuple[int, ...]
    removed_versions: tuple[int, ...]
    removed: tuple[RemovedFile, ...]
    kept_recent: tuple[str, ...] = field(default_factory=tuple)
    foreign: tuple[str, ...] = field(default_factory=tuple)

    @property
    def bytes_reclaimed(self) -> int:
        """Bytes of the files removed (would be removed, in a dry run)."""
        return sum(f.bytes for f in self.removed)

    def summary(self) -> str:
        """One line: what was (or would be) removed and the bytes reclaimed."""
        verb = "would remove" if self.dry_run else "removed"
        kinds = {r: sum(1 for f in self.removed if f.reason == r) for r in ("orphan", "old-version", "manifest", "temp")}
        detail = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        versions = (f"; versions {_ranges(self.removed_versions)} {'would be' if self.dry_run else 'were'} removed"
                    if self.removed_versions else "")
        return (f"{self.url}: {verb} {len(self.removed)} file(s) ({detail or 'nothing to remove'}), "
                f"{self.bytes_reclaimed:,} bytes{versions}; kept versions {_ranges(self.retained_versions) or 'none'}"
                + (f"; {len(self.kept_recent)} recent unreferenced file(s) kept" if self.kept_recent else ""))


def _ranges(vs: Iterable[int]) -> str:
    out: list[str] = []
    for v in sorted(vs):
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def parse_duration(text: str | float | int | _dt.timedelta) -> float:
    """Seconds of ``text``: a number (seconds), ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, or a timedelta.

    Raises
    ------
    InvalidArgumentError
        Negative, not finite, or not one of those forms.
    """
    if isinstance(text, _dt.timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*", text.lower())
        if not m:
            raise InvalidArgumentError(f"older_than: expected a duration like 30s, 15m, 1h, 7d or seconds, got {text!r}")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    else:
        raise InvalidArgumentError(f"older_than must be seconds, a timedelta or a string like '1h', got {type(text).__name__}")
    if not (seconds >= 0 and seconds != float("inf")):
        raise InvalidArgumentError(f"older_than must be a finite duration >= 0, got {text!r}")
    return seconds


# -- listing ----------------------------------------------------------------------------------------
def _mtime(info: Mapping[str, Any]) -> float | None:
    """Modification time (epoch seconds) of an fsspec listing entry, None when it has none."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if isinstance(v, _dt.datetime):
            return (v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return _dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class _Entry:
    rel: str
    size: int
    mtime: float | None
    link: bool


def _listing(storage: Storage) -> list[_Entry]:
    """Every file under the root (recursive), relative paths; [] when the root does not exist."""
    fs, root = storage.fs, storage.root
    with storage._op("listing"):
        try:
            fs.invalidate_cache(root)
        except Exception:  # noqa: BLE001 - a filesystem without a listing cache
            pass
        if not fs.exists(root):
            return []
        found = fs.find(root, detail=True, withdirs=False)
    prefix = root.rstrip("/") + "/"
    out = []
    for name, info in sorted(found.items()):
        name = name if name.startswith("/") or not prefix.startswith("/") else "/" + name
        rel = name[len(prefix):] if name.startswith(prefix) else name.lstrip("/")
        if not rel or info.get("type") == "directory":
            continue
        out.append(_Entry(rel, int(info.get("size") or 0), _mtime(info), bool(info.get("islink"))))
    return out


def _is_library_leftover(e: _Entry) -> bool:
    return not e.link and bool(_SHARD_RE.match(e.rel) or _TEMP_RE.match(e.rel))


def library_orphans_only(storage: Storage) -> bool:
    """True if the root exists, holds files, and every one of them is a leftover of this library
    (a shard file or a temporary file in its layout), with no committed manifest among them: what
    a writer killed while creating the dataset leaves behind. Used by the writer to treat such a
    directory as empty."""
    entries = _listing(storage)
    return bool(entries) and all(_is_library_leftover(e) for e in entries)


# -- vacuum -----------------------------------------------------------------------------------------
def fsync_dir(path: str) -> None:
    """fsync a local directory (its entries: files created, renamed or deleted in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_hint(storage: Storage, version: int) -> None:
    """Rewrite ``_tsfs/_latest``; on a local disk durably (file and directory fsynced) before any
    manifest is deleted, so the newest version is found without probing from version 1."""
    storage.write_bytes(LATEST, str(version).encode())
    if storage.is_local:
        with storage._op("syncing", LATEST):
            fd = os.open(storage.path(LATEST), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(storage.path(META_DIR))


def vacuum(
    storage: Storage | str,
    retain_versions: int | None = None,
    older_than: float | str | _dt.timedelta = DEFAULT_OLDER_THAN_S,
    *,
    dry_run: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> VacuumReport:
    """Delete the files of a dataset that no retained version needs.

    Parameters
    ----------
    storage : Storage or str
        The dataset root (a URL or path, opened with ``storage_options``).
    retain_versions : int, optional
        Keep the newest this many versions (at least 1); None (default) keeps every version and
        removes only orphans (files no version ever named) and temporary files.
    older_than : float, str or timedelta
        Safety age (default 1 hour): a file modified less than this long ago is kept, as are all
        files of a writer that wrote one that recently (it may still be writing), and a version
        superseded less than this long ago (readers may still be reading it). ``0`` removes
        everything unreferenced at once: only when no writer is running.
    dry_run : bool
        Report what would be removed; delete nothing.
    progress : bool
        Show a progress bar (tqdm) while deleting.

    Returns
    -------
    VacuumReport

    Raises
    ------
    DatasetNotFoundError
        The root holds neither a committed version nor leftovers of the library.
    CorruptDatasetError
        A retained manifest is damaged: nothing is deleted (its files cannot be told apart).
    StorageError
        The storage failed; what was deleted before stays deleted (manifests first, so every
        version still listed stays whole).
    """
    if not isinstance(storage, Storage):
        storage = Storage(storage, storage_options)
    if retain_versions is not None and (isinstance(retain_versions, bool) or not isinstance(retain_versions, int)
                                        or retain_versions < 1):
        raise InvalidArgumentError(f"retain_versions must be an int >= 1 or None (keep all), got {retain_versions!r}")
    age = parse_duration(older_than)
    now = time.time()

    def old(mtime: float | None) -> bool:  # an unknown age counts as young, unless age is 0
        return age == 0 or (mtime is not None and now - mtime >= age)

    entries = _listing(storage)
    latest = latest_version(storage)
    manifests = {int(m.group("v")): e for e in entries if (m := _MANIFEST_RE.match(e.rel)) and not e.link}
    if latest is None:
        if not entries or not all(_is_library_leftover(e) for e in entries):
            raise DatasetNotFoundError(f"{storage.url} is not a tensorstore_fs dataset (no {META_DIR}/ manifest "
                                       "and no files a tensorstore_fs writer left)")
    present = sorted(v for v in manifests if latest is None or v <= latest)
    if latest is not None and latest not in present:
        present.append(latest)  # found by probing (committed after the listing)
    newest = present[-(retain_versions or len(present)):] if present else []
    retained = set(newest) | ({latest} if latest is not None else set())
    for i, v in enumerate(present[:-1]):
        successor = manifests.get(present[i + 1])
        if v not in retained and not old(successor.mtime if successor else None):
            retained.add(v)  # superseded recently: a reader may still be reading it
    expired = [v for v in present if v not in retained]

    referenced: set[str] = set()
    for v in sorted(retained):
        m: Manifest = load_manifest(storage, v)
        referenced.update(s.path for s in m.shards)
    ever_named = set(referenced)
    for v in expired:  # best effort: only tells orphans from old versions' shards in the report
        try:
            ever_named.update(s.path for s in load_manifest(storage, v).shards)
        except Exception:  # noqa: BLE001 - the manifest is deleted anyway
            logger.debug("%s: could not read manifest %d", storage.url, v, exc_info=True)

    # a writer still writing keeps every file: its newest file is young
    newest_by_writer: dict[str, float] = {}
    for e in entries:
        if (m2 := _SHARD_RE.match(e.rel)) and e.rel not in referenced:
            t = e.mtime if e.mtime is not None else float("inf")
            newest_by_writer[m2.group("writer")] = max(newest_by_writer.get(m2.group("writer"), -1.0), t)

    remove_manifests: list[RemovedFile] = []
    remove_files: list[RemovedFile] = []
    kept_recent: list[str] = []
    foreign: list[str] = []
    for e in entries:
        if e.link:
            foreign.append(e.rel)
        elif (mm := _MANIFEST_RE.match(e.rel)):
            if int(mm.group("v")) in expired:
                remove_manifests.append(RemovedFile(e.rel, e.size, "manifest"))
        elif e.rel == LATEST:
            pass
        elif _TEMP_RE.match(e.rel):
            (remove_files.append(RemovedFile(e.rel, e.size, "temp")) if old(e.mtime) else kept_recent.append(e.rel))
        elif (ms := _SHARD_RE.match(e.rel)):
            if e.rel in referenced:
                continue
            if old(e.mtime) and old(newest_by_writer.get(ms.group("writer"))):
                remove_files.append(RemovedFile(e.rel, e.size, "old-version" if e.rel in ever_named else "orphan"))
            else:
                kept_recent.append(e.rel)
        else:
            foreign.append(e.rel)
    if foreign:
        logger.info("%s: %d file(s) not in the tensorstore_fs layout left alone (e.g. %s)", storage.url,
                    len(foreign), foreign[0])

    removed_versions = tuple(v for v in expired if v in manifests)
    if not dry_run and remove_files and latest is not None:
        # a version committed since the listing keeps the files it names (its writer's newest
        # files are young anyway, unless older_than is 0)
        newer = latest_version(storage) or latest
        for v in range(latest + 1, newer + 1):
            named = {s.path for s in load_manifest(storage, v).shards}
            remove_files = [f for f in remove_files if f.path not in named]
    if not dry_run and (remove_manifests or remove_files):
        if remove_manifests and latest is not None:
            _write_hint(storage, latest)
        # manifests first: an interrupted vacuum never leaves a version naming a deleted file
        todo = remove_manifests + remove_files
        with progress_bar(progress, len(todo), "vacuum", unit="files") as bar:
            for f in todo:
                storage.delete(f.path)
                bar.update(1)
                logger.info("%s: removed %s (%s, %d bytes)", storage.url, f.path, f.reason, f.bytes)
        if storage.is_local and remove_manifests:
            with storage._op("syncing", META_DIR):
                fsync_dir(storage.path(META_DIR))
    return VacuumReport(url=storage.url, dry_run=dry_run, latest_version=latest,
                        retained_versions=tuple(sorted(retained)), removed_versions=removed_versions,
                        removed=tuple(remove_manifests + remove_files), kept_recent=tuple(kept_recent),
                        foreign=tuple(foreign))
