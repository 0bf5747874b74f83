"""Imports go one way (docs/architecture.md): checked on the source, so a new module can't slip."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sciddpm"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# folder -> third-party roots and sciddpm modules it may import (itself always allowed)
RULES = {
    "diffusion": ({"torch", "numpy"}, {"sciddpm.registry", "sciddpm.checks"}),
    "nn": ({"torch", "numpy"}, {"sciddpm.registry"}),
    "metrics": ({"torch", "numpy", "xarray", "scipy"}, set()),
    "data": ({"torch", "numpy", "xarray", "scipy", "zarr", "matplotlib", "soundfile", "torchaudio",
              "h5py", "h5netcdf", "gcsfs", "fsspec", "yaml", "tqdm"},
             {"sciddpm.registry", "sciddpm.metrics", "sciddpm.checks", "sciddpm.files", "sciddpm.plots"}),
}
# leaf modules every layer may use: they import nothing of sciddpm but each other
LEAVES = {"registry.py": set(), "checks.py": set(), "files.py": set(), "plots.py": {"sciddpm.files"}}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("<relative>")
    return names


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports(folder):
    third_party, own = RULES[folder]
    files = sorted((PACKAGE / folder).glob("*.py"))
    assert files, f"sciddpm/{folder} has no modules"
    for path in files:
        for name in _imports(path):
            root = name.split(".")[0]
            if root in STDLIB:
                continue
            if root == "sciddpm":
                allowed = name.startswith(f"sciddpm.{folder}") or any(
                    name == m or name.startswith(m + ".") for m in own)
                assert allowed, f"{path.relative_to(PACKAGE.parent)} imports {name} (not allowed for {folder}/)"
            else:
                assert root in third_party, f"{path.relative_to(PACKAGE.parent)} imports {name}"


def test_sampling_never_imports_training():
    for module in ("api.py", "assembly.py", "cases.py", "ensembles.py", "infill.py"):
        imported = _imports(PACKAGE / module)
        assert not any(n.startswith(("sciddpm.training", "sciddpm.resume")) for n in imported), module


@pytest.mark.parametrize("module", sorted(LEAVES))
def test_leaf_modules_stay_leaves(module):
    own = {n for n in _imports(PACKAGE / module) if n.split(".")[0] == "sciddpm"}
    assert own <= LEAVES[module], f"sciddpm/{module} imports {sorted(own - LEAVES[module])}"
