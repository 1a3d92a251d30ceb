"""Dependencies go one way: nexvk.quant (the numpy codec, the specification) imports nothing
else of nexvk; kernels import quant, never the reverse; model/ imports submodules, never the
package root (`import nexvk` / `from nexvk import ...`). Read from the source with ast."""
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


def test_codec_backends_meet_at_the_root():
    import nexvk
    from nexvk.quant import Codec
    assert type(nexvk.codec("turbo3", 64)) is Codec
    assert not hasattr(nexvk.quant, "codec")  # the backend choice lives at the root only
    with pytest.raises(ValueError, match="unknown backend"):
        nexvk.codec("turbo3", 64, backend="cuda")
