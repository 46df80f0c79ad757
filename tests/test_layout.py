"""The package layout keeps its promises: names say one thing and lower layers stay leaves.

Each check runs in a fresh interpreter, since what a module imports (and the order in which
modules are imported) is only visible before anything else has loaded them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this tree's ``qkscore``; return stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "first, second",
    [
        ("import qkscore.extraction", "from qkscore import extract"),
        ("from qkscore import extract", "import qkscore.extraction"),
    ],
)
def test_lazy_extract_is_the_function_in_either_import_order(first, second):
    out = _run(
        f"{first}\n{second}\nimport qkscore\n"
        "print(callable(qkscore.extract), qkscore.extract is qkscore.extraction.extract,"
        " callable(extract))"
    )
    assert out.split() == ["True", "True", "True"]


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth of its code (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_spec_is_a_leaf_that_imports_no_format():
    imported = _imported_modules(SRC / "qkscore" / "data" / "spec.py")
    qkscore_modules = {name for name in imported if name.startswith("qkscore")}
    assert qkscore_modules <= {
        "qkscore.data.items",
        "qkscore.data.items.DataError",
        "qkscore.data.items.Item",
    }, qkscore_modules


def test_every_format_module_registers_and_load_items_finds_it():
    from qkscore.data import available_formats

    out = _run(
        "import qkscore.data.spec as spec\nimport qkscore.data\n"
        "print(' '.join(sorted(spec.available_formats())))"
    )
    expected = {
        "csv",
        "folio",
        "generated",
        "hf",
        "jsonl",
        "mmlu",
        "multi-logieval",
        "pararule-plus",
        "prontoqa",
        "prontoqa-ood",
        "proofwriter",
    }
    assert set(out.split()) == expected
    assert set(available_formats()) == expected
    modules = {p.stem for p in (SRC / "qkscore" / "data" / "formats").glob("*.py")}
    registered_by = {info.fn.__module__.rsplit(".", 1)[-1] for info in available_formats().values()}
    assert registered_by == modules - {"__init__", "helpers"}


#: The layers of CONTRIBUTING.md, lowest first: a module imports only from its own layer or
#: those below it. Every module of the package must sit in one (a new one is placed here).
LAYERS: list[tuple[str, ...]] = [
    ("qkscore", "qkscore._version", "qkscore.decision", "qkscore.dtypes", "qkscore.progress"),
    ("qkscore.data",),
    ("qkscore.io",),
    ("qkscore.prompts", "qkscore.grid"),
    ("qkscore.models",),
    ("qkscore.extraction", "qkscore.scoring"),
    ("qkscore.stats",),
    ("qkscore.estimators",),
    ("qkscore.schemas", "qkscore.results", "qkscore.run", "qkscore.outputs", "qkscore.profile"),
    ("qkscore.scanning",),
    ("qkscore.pipeline", "qkscore.step_calibration", "qkscore.sweep"),
    ("qkscore.audit", "qkscore.report"),
    ("qkscore.generation", "qkscore.integrations", "qkscore.lm_eval_tasks"),
    ("qkscore.cli", "qkscore.__main__"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    """The layer of a module (or of a name inside one); None for a module in no layer."""
    best, found = -1, None
    for rank, entries in enumerate(LAYERS):
        for entry in entries:
            inside = module == entry or (entry != "qkscore" and module.startswith(entry + "."))
            if inside and len(entry) > best:
                best, found = len(entry), rank
    return found


def _package_imports(path: Path) -> set[str]:
    """What a module imports from qkscore, at any depth (function-level imports too), with
    relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "qkscore" or n.startswith("qkscore.")}


def test_lower_layers_never_import_higher_ones():
    modules = sorted((SRC / "qkscore").rglob("*.py"))
    assert len(modules) > 80  # every module, generation/, integrations/ and sweep included
    unplaced = [_module_name(p) for p in modules if _layer(_module_name(p)) is None]
    assert not unplaced, f"place these modules in LAYERS (and CONTRIBUTING.md): {unplaced}"
    wrong = []
    for path in modules:
        module = _module_name(path)
        for name in sorted(_package_imports(path)):
            if _layer(name) is not None and _layer(name) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "qkscore" / "data"
    fake.mkdir(parents=True)
    (fake / "leaf.py").write_text(
        "def f():\n    from qkscore.audit.check import Judge\n    from .. import cli\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    imported = _package_imports(fake / "leaf.py")
    assert {"qkscore.audit.check", "qkscore.cli"} <= imported
    assert _layer("qkscore.audit.check.Judge") > _layer("qkscore.data.leaf")


#: The reader classes: code asks a reader (its protocol), never which class it is.
_READER_CLASSES = {
    "Reader",
    "HeadSelector",
    "TopKEnsemble",
    "LinearQKReader",
    "HybridReader",
    "HiddenStateProbe",
}


def test_no_code_branches_on_a_readers_class():
    found = []
    for path in sorted((SRC / "qkscore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"):
                continue
            if len(node.args) < 2:
                continue
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            names = {getattr(k, "id", getattr(k, "attr", "")) for k in kinds}
            if names & _READER_CLASSES:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, found


#: Private names still imported across modules, each owned by work elsewhere: shrink, never grow.
PRIVATE_IMPORTS_LEFT = {
    ("qkscore/estimators/ensemble.py", "qkscore.estimators.heads._key"),
    ("qkscore/cli/audit.py", "qkscore.audit.store._redact"),
}


def test_no_module_imports_another_modules_private_name():
    """``from qkscore.x import _name`` reaches into another module (a private module of a
    package, such as ``qkscore.cli._errors``, is fine)."""
    found = set()
    for path in sorted((SRC / "qkscore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "qkscore"
            ):
                continue
            folder = SRC.joinpath(*node.module.split("."))
            for alias in node.names:
                name = alias.name
                private = name.startswith("_") and not name.startswith("__")
                module = (folder / f"{name}.py").exists() or (folder / name).is_dir()
                if private and not module:
                    found.add((path.relative_to(SRC).as_posix(), f"{node.module}.{name}"))
    assert found <= PRIVATE_IMPORTS_LEFT, sorted(found - PRIVATE_IMPORTS_LEFT)
