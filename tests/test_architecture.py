"""The package's layers (docs/architecture.md): imports only go down, the Parquet byte layer is the
only one that parses Parquet bytes, adapters talk to the read layer's public interface, and
``import tensorstore_fs`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tensorstore_fs"

# lowest first; a module may import from its own layer and the layers below it
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "_checks", "_crc", "_pool", "_progress", "schema", "ragged", "predicates", "world", "plan",
              "columns"}),
    ("parquet", {"parquet"}),
    ("format", {"encoding", "manifest", "storage", "remote", "cache", "vacuum"}),
    ("read", {"read"}),
    ("write", {"writer"}),
    ("top", {"readers", "converters", "cli", "audit", "quality", "__init__"}),
]
FORMAT = {"parquet", "encoding", "manifest", "storage", "remote", "cache"}
ADAPTERS = {"readers"}


def _unit(module: str) -> str:
    """The first component of a dotted name inside the package ("read.stream" -> "read")."""
    return module.split(".", 1)[0]


def _layer(unit: str) -> int:
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"module {unit!r} is in no layer: add it to LAYERS and docs/architecture.md")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Package-relative dotted names ``path`` imports (lazy imports inside functions included)."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                out.append((".".join(base + [node.module]), node.lineno))
            else:
                out += [(".".join(base + [a.name]), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorstore_fs."):
            out.append((node.module.split(".", 1)[1], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".", 1)[1], node.lineno) for a in node.names if a.name.startswith("tensorstore_fs.")]
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down(path):
    here = _unit(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    for name, line in _imports(path):
        there = _unit(name)
        if there == "__version__":
            continue
        assert _layer(there) <= _layer(here), (
            f"{path.relative_to(PACKAGE)}:{line} imports {name} ({LAYERS[_layer(there)][0]} layer) from the "
            f"{LAYERS[_layer(here)][0]} layer")


@pytest.mark.parametrize("path", sorted((PACKAGE / "readers").glob("*.py")), ids=lambda p: p.name)
def test_adapters_use_only_the_read_interface(path):
    for name, line in _imports(path):
        assert _unit(name) not in FORMAT, f"readers/{path.name}:{line} imports the format layer ({name})"
        assert not name.startswith("read."), (
            f"readers/{path.name}:{line} imports {name}: adapters use tensorstore_fs.read's public interface")


def test_only_the_parquet_layer_parses_pages():
    users = {str(p.relative_to(PACKAGE)) for p in MODULES
             if any(n in ("parquet.thrift", "parquet.pages.page_header", "parquet.pages.plain_values_offset")
                    or n.endswith("thrift") for n, _ in _imports(p))}
    assert {u.split("/", 1)[0] for u in users} <= {"parquet"}, users
    for p in MODULES:
        if p.parent.name != "parquet":
            text = p.read_text()
            assert "plain_values_offset" not in text and "page_header(" not in text, p


def test_no_module_is_too_big():
    big = {str(p.relative_to(PACKAGE)): n for p in MODULES
           if p.parent.name in ("read", "parquet", "readers") and (n := len(p.read_text().splitlines())) > 500}
    assert not big, big


def test_import_stays_light():
    code = ("import sys, tensorstore_fs, tensorstore_fs.read; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'h5py', 'pyspark') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
