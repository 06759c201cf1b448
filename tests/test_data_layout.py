"""The data path reads in one direction: each module of posttrain/data imports only modules before it
in `posttrain.data.MODULES` (read -> shape -> units -> filter -> examples), at module level or inside functions."""

from __future__ import annotations

import ast

from conftest import REPO

import posttrain.data

DATA = REPO / "posttrain" / "data"


def _data_imports(path) -> set[str]:
    """The posttrain.data modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "posttrain.data":  # from posttrain.data import fields
                found |= {a.name for a in node.names}
            elif node.module.startswith("posttrain.data."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("posttrain.data.")}
    return found


def test_every_data_module_has_its_place_in_the_path():
    on_disk = sorted(p.stem for p in DATA.glob("*.py") if p.stem != "__init__")
    assert sorted(posttrain.data.MODULES) == on_disk and len(set(posttrain.data.MODULES)) == len(on_disk)


def test_no_data_module_imports_one_later_in_the_path():
    order = {name: i for i, name in enumerate(posttrain.data.MODULES)}
    backwards = [f"{name} imports {target}" for name in posttrain.data.MODULES
                 for target in sorted(_data_imports(DATA / f"{name}.py")) if order[target] >= order[name]]
    assert not backwards, backwards
