"""The direction of dependencies: the core (recipe, pipeline, stages, evaluation) never imports the
reporting or the command line (only the front doors, cli and api, do); reporting reads typed results, never the pipeline or a stage;
no import cycles. Imports are read with `ast` (module level and inside functions), and every
module is imported for real once."""

from __future__ import annotations

import ast
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "posttrain"
REPORTING, CLI, PIPELINE = "posttrain.reporting", "posttrain.cli", "posttrain.pipeline"
FRONT_DOORS = (CLI, "posttrain.__main__", "posttrain.api")  # the command line and its Python twin: they write reports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str
    target: str  # a posttrain module (the most specific one the statement names)
    line: int
    module_level: bool  # runs when the importing module is imported (not inside a function or TYPE_CHECKING)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _target(name: str) -> str | None:
    """The posttrain module a dotted name refers to (a name inside a module refers to that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, module_level: bool):
        for child in ast.iter_child_nodes(node):
            inner = module_level
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = False
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:  # type-only imports: a dependency, but never run
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), module_level)
                continue
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in child.names]  # `from pkg import module` names the module
            else:
                visit(child, inner)
                continue
            for name in names:
                target = _target(name) if name.startswith("posttrain") else None
                if target and target != module:
                    found.append(Import(module, target, child.lineno, module_level))

    visit(tree, True)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(REPO)}:{imp.line} imports {imp.target}"


def _stage_implementations() -> set[str]:
    """Modules that define a stage kind: the built-in ones the registry names, and posttrain.stages."""
    from posttrain.stage_registry import BUILTIN_STAGES

    return {target.partition(":")[0] for target in BUILTIN_STAGES} | {m for m in MODULES if _inside(m, "posttrain.stages")}


def test_the_static_import_reader_sees_module_and_function_level_imports():
    cli = {(i.target, i.module_level) for i in IMPORTS if i.source == CLI}
    assert ("posttrain.errors", True) in cli and (PIPELINE, False) in cli and ("posttrain.reporting.compare", False) in cli
    assert any(i.source == "posttrain.stage" and i.target == "posttrain.model_store" and not i.module_level for i in IMPORTS)  # TYPE_CHECKING


def test_nothing_outside_reporting_and_the_front_doors_imports_them():
    wrong = [_where(i) for i in IMPORTS
             if (_inside(i.target, REPORTING) or i.target == CLI)
             and not (_inside(i.source, REPORTING) or i.source in FRONT_DOORS)]
    assert not wrong, "the core must not depend on reporting or the command line:\n" + "\n".join(wrong)


def test_reporting_reads_results_not_the_pipeline_or_stages():
    forbidden = {PIPELINE, CLI, "posttrain.stage_registry", *_stage_implementations()}
    wrong = [_where(i) for i in IMPORTS if _inside(i.source, REPORTING) and i.target in forbidden]
    assert not wrong, "reporting may read posttrain.results (and the stage contract), nothing that runs stages:\n" + "\n".join(wrong)


def test_evaluation_does_not_import_the_pipeline_or_reporting():
    wrong = [_where(i) for i in IMPORTS if _inside(i.source, "posttrain.eval") and (i.target in (PIPELINE, CLI) or _inside(i.target, REPORTING))]
    assert not wrong, "\n".join(wrong)
    moved = {"report", "html_report", "plots", "summary", "compare", "gates"}
    assert not {f"posttrain.eval.{m}" for m in moved} & set(MODULES), "reporting and release logic live in posttrain.reporting"


def test_no_import_cycles_at_module_level():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.module_level:
            graph[i.source].add(i.target)
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"module-level import cycles: {cycles}"


def test_every_module_imports():
    started = time.perf_counter()
    failed = {}
    for module in sorted(MODULES):
        if module == "posttrain.__main__":
            continue  # runs the command when imported as a module; it only imports posttrain.cli
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - report every module that does not import
            failed[module] = f"{type(e).__name__}: {e}"
    assert not failed, failed
    assert time.perf_counter() - started < 120
