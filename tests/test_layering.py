"""Dependencies go one way: nexvk.quant (the numpy codec, the specification) imports nothing
else of nexvk; kernels import quant, never the reverse; model/ imports submodules, never the
package root (`import nexvk` / `from nexvk import ...`); in the cache package the layout and
the config are read by everything and read nothing of the cache, the planner reads only them,
and the stores do not know KVCache; backend names are compared in nexvk/backends.py only.
Read from the source with ast."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nexvk"


def _imports(path):
    """Every module name imported by `path`, at any depth (lazy imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
    return out


@pytest.mark.parametrize("path", sorted((PKG / "quant").glob("*.py")), ids=lambda p: p.name)
def test_quant_depends_on_nothing_else_in_nexvk(path):
    bad = [m for m, _ in _imports(path) if m.split(".")[0] == "nexvk" and
           not m.startswith("nexvk.quant")]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((PKG / "model").glob("*.py")), ids=lambda p: p.name)
def test_model_imports_submodules_not_the_package_root(path):
    bad = [(m, n) for m, n in _imports(path) if m == "nexvk"]
    assert not bad, f"{path.name} imports the package root: {bad}"


def _nexvk_imports(path):
    return {m for m, _ in _imports(path) if m.split(".")[0] == "nexvk"}


@pytest.mark.parametrize("name", ["layout.py", "config.py", "state_rows.py"])
def test_cache_layout_and_config_read_nothing_of_the_cache(name):
    bad = {m for m in _nexvk_imports(PKG / "cache" / name) if m.startswith("nexvk.cache")}
    assert not bad, f"cache/{name} imports {bad}"


@pytest.mark.parametrize("name", ["numpy_store.py", "vulkan_store.py"])
def test_cache_stores_do_not_know_kvcache(name):
    # (state_rows.py: the position-order state both stores share, which imports nothing)
    bad = {m for m in _nexvk_imports(PKG / "cache" / name) if (m.startswith("nexvk.cache")
           and m != "nexvk.cache.state_rows") or m.startswith("nexvk.model")}
    assert not bad, f"cache/{name} imports {bad}"


def test_the_planner_reads_the_cache_layout_not_the_cache():
    got = {m for m in _nexvk_imports(PKG / "model" / "plan.py") if m.startswith("nexvk.cache")}
    assert got <= {"nexvk.cache.layout", "nexvk.cache.config"}, got


@pytest.mark.parametrize("path", sorted([*(PKG / "model").glob("*.py"), *(PKG / "cache").glob("*.py"),
                                         PKG / "__init__.py"]), ids=lambda p: p.name)
def test_backend_names_are_compared_in_the_registry_only(path):
    """Which backend runs, and what each one brings, is nexvk/backends.py's to say."""
    from nexvk.backends import BACKENDS
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for c in [node.left, *node.comparators]:
                if isinstance(c, ast.Constant) and c.value in BACKENDS:
                    bad.append(f"line {node.lineno}: {c.value!r}")
    assert not bad, f"{path.name} compares backend names: {bad}"


def test_codec_backends_meet_at_the_root():
    import nexvk
    from nexvk.quant import Codec
    assert type(nexvk.codec("turbo3", 64)) is Codec
    assert not hasattr(nexvk.quant, "codec")  # the backend choice lives at the root only
    with pytest.raises(ValueError, match="unknown backend"):
        nexvk.codec("turbo3", 64, backend="cuda")
