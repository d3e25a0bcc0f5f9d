"""The package's shape: layers that only point down, no private names across modules, no
import guards around the package's own modules, and one open per log in a report."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

import gradscope
from gradscope import TrainConfig, train

PKG = Path(gradscope.__file__).parent

#: What each part of the package may import (besides itself and the root modules
#: ``_version``, ``_blas`` and ``files``). Layers point down: engine <- record <- training;
#: reading <- analysis <- views <- cli. Views never import the engine or training; the
#: sweep (training) diagnoses its runs for its summary, so training may use the readers
#: and the analysis; teaching runs the optimizers, an engine user beside the views.
ALLOWED = {
    "engine": set(),
    "record": {"engine"},
    "reading": {"record"},
    "analysis": {"engine", "record", "reading"},
    "training": {"engine", "record", "reading", "analysis"},
    "views": {"record", "reading", "analysis"},
    "teaching": {"engine"},
    "torch": {"engine", "record", "training", "reading"},
    "cli": {"engine", "record", "reading", "analysis", "training", "views", "teaching",
            "torch"},
    "gradscope": None,  # the package's __init__ and __main__: the public API, anything
}
ROOT = {"_version", "_blas", "files"}


def _part(module: str) -> str:
    """The layer of ``gradscope.x.y``: ``x`` (a root module's own name), ``gradscope`` for
    the package's __init__ / __main__."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return "gradscope"
    return parts[1]


def _module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_problems(source: str, module: str, is_pkg: bool = False) -> list[str]:
    """Every broken rule in one module's source: imports that point up the layers, private
    names taken from another module, private modules used outside their package, and
    ``except ImportError`` around an import of the package's own modules."""
    tree = ast.parse(source)
    problems = []
    targets: list[tuple[ast.AST, str, list[str]]] = []   # (node, module imported, names)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _resolve(module, is_pkg, node)
            if src.split(".")[0] == "gradscope":
                targets.append((node, src, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "gradscope":
                    targets.append((node, a.name, []))
    me = _part(module)
    for node, src, names in targets:
        where = f"{module}:{node.lineno}"
        # a name imported from a package may be a submodule: judge it as one
        mods = [src]
        if names:
            sub = [f"{src}.{n}" for n in names if _is_module(f"{src}.{n}")]
            mods = sub or [src]
            for n in names:
                if _private(n) and f"{src}.{n}" not in sub:
                    problems.append(f"{where} imports the private name {n} from {src}")
        for m in mods:
            parts = m.split(".")
            for i, p in enumerate(parts):
                owner = ".".join(parts[:i])
                if _private(p) and not (module == owner or module.startswith(owner + ".")):
                    problems.append(f"{where} imports {m}, private to {owner}")
            if m in ("gradscope", "gradscope.__init__"):
                if me != "gradscope":
                    problems.append(f"{where} imports the package's public API from inside")
                continue
            other = _part(m)
            if other == me or other in ROOT:
                continue
            allowed = ALLOWED.get(me, set())
            if me not in ALLOWED:
                problems.append(f"{where}: {me} is not in the layer map of the import test")
            elif allowed is not None and other not in allowed:
                problems.append(f"{where}: {me} imports {m} ({other} is not below {me})")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for h in node.handlers:
            for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]):
                if isinstance(t, ast.Name):
                    caught.add(t.id)
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        for sub in ast.walk(ast.Module(body=node.body, type_ignores=[])):
            own = (isinstance(sub, ast.ImportFrom) and (sub.level or (sub.module or "")
                                                         .startswith("gradscope")))
            own |= isinstance(sub, ast.Import) and any(
                a.name.startswith("gradscope") for a in sub.names)
            if own:
                problems.append(f"{module}:{sub.lineno} guards an import of the package's "
                                "own module with except ImportError")
    return problems


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path, _module_name(path), path.name == "__init__.py"


def test_every_module_imports_only_down_the_layers_and_no_private_name():
    problems = []
    for path, module, is_pkg in _modules():
        problems += import_problems(path.read_text(), module, is_pkg)
    assert problems == [], "\n".join(problems)


def test_every_part_of_the_package_is_in_the_layer_map():
    parts = {_part(m) for _, m, _ in _modules()}
    assert parts - ROOT <= set(ALLOWED), parts - ROOT - set(ALLOWED)


@pytest.mark.parametrize("module, source, expected", [
    ("gradscope.views.report", "from ..training.loop import TrainConfig\n", "not below views"),
    ("gradscope.views.report", "from ..engine.activations import get_activation\n",
     "not below views"),
    ("gradscope.views.report", "from ..reading.readers import _committed\n", "private name"),
    ("gradscope.reading.readers", "from ..analysis import diagnose\n", "not below reading"),
    ("gradscope.engine.mlp", "import gradscope.record.writer\n", "not below engine"),
    ("gradscope.cli.sweep", "from ..training.sweep import _needs_training\n", "private name"),
    ("gradscope.cli.main", "from ..training import _signals\n", "private to gradscope.training"),
    ("gradscope.views.report",
     "try:\n    from ..analysis.diagnose import diagnose\nexcept ImportError:\n    pass\n",
     "except ImportError"),
    ("gradscope.record.writer", "from .. import diagnose\n", "public API from inside"),
])
def test_the_import_check_finds_each_kind_of_break(module, source, expected):
    found = import_problems(source, module)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("module, source", [
    ("gradscope.record.writer", "from .._version import __version__\n"),
    ("gradscope.training.loop", "from ._signals import StopRequest\n"),
    ("gradscope.views.report", "from ..analysis.diagnose import diagnose\n"),
    ("gradscope.views.report", "from . import plots\n"),
    ("gradscope.cli.main", "try:\n    import rich\nexcept ImportError:\n    rich = None\n"),
])
def test_the_import_check_accepts_what_the_rules_allow(module, source):
    assert import_problems(source, module) == []


# -- one open per log ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The README's quick-start runs, shortened: one of them longer than the report's
    time bins (read binned), one short (read whole)."""
    d = tmp_path_factory.mktemp("quickstart")
    common = {"depth": 8, "optimizer": "sgd", "lr": 0.05, "batch_size": 32}
    train(TrainConfig(activation="sigmoid", init="standard", steps=450, **common),
          d / "sigmoid-standard.h5")
    train(TrainConfig(activation="relu", init="he", steps=120, **common), d / "relu-he.h5")
    return d


@pytest.fixture
def count_opens(monkeypatch):
    opened: list[Path] = []
    real = h5py.File

    class Counting(real):
        def __init__(self, name, *args, **kw):
            if isinstance(name, (str, os.PathLike)):
                opened.append(Path(name).resolve())
            super().__init__(name, *args, **kw)

    monkeypatch.setattr(h5py, "File", Counting)
    return opened


def test_report_command_opens_each_log_once(quickstart, tmp_path, count_opens):
    from click.testing import CliRunner

    from gradscope.cli.main import main

    out = tmp_path / "quickstart.pdf"
    res = CliRunner().invoke(main, ["report", str(quickstart), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0
    logs = sorted(p.resolve() for p in quickstart.glob("*.h5"))
    assert sorted(count_opens) == logs, count_opens


def test_diagnose_opens_a_log_once(quickstart, count_opens):
    from gradscope.analysis.diagnose import evaluate, load_frames

    path = quickstart / "sigmoid-standard.h5"
    d = gradscope.diagnose(path)
    assert count_opens == [path.resolve()]
    # the same result as from the tables read one by one
    frames = {"steps": gradscope.read_steps(path), "layers": gradscope.read_layers(path),
              "config": gradscope.read_config(path), "status": gradscope.read_status(path),
              "epochs": gradscope.read_epochs(path)}
    e = evaluate(**frames, run=str(path))
    assert (d.verdict, d.cause_names, d.flags) == (e.verdict, e.cause_names, e.flags)
    assert [f.message for f in d.findings.values()] == [f.message for f in e.findings.values()]
    assert load_frames(path)["layers"].equals(frames["layers"])


def test_import_gradscope_is_light_and_every_public_name_resolves():
    # `import gradscope` loads neither pandas, scipy, h5py nor matplotlib (about 0.8 s, taken
    # on first use of a name); every name of __all__, and the subpackages with the modules
    # that an import used to bring (gradscope.reading.readers), resolve afterwards
    code = (
        "import sys, gradscope\n"
        "heavy = [m for m in ('pandas', 'scipy', 'h5py', 'matplotlib', 'torch')"
        " if m in sys.modules]\n"
        "names = [n for n in gradscope.__all__ if getattr(gradscope, n, None) is None]\n"
        "ok = callable(gradscope.reading.readers.read_norm)"
        " and callable(gradscope.training.loop.train)\n"
        "print(heavy, names, ok, sorted(gradscope.__all__) == sorted(set(gradscope.__all__)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")[0]
    assert out == "[] [] True True"
