"""The code layout the strategy registry and the library split promise, checked on the source (ast):

(a) No code outside s2s/strategies/ knows a strategy by name: in experiments/, evaluation/, bench/
    and the rest of s2s/, a registered strategy's name appears only in docstrings, comments and
    argparse help/description/usage/epilog text (the command lines' examples), never in a string the
    code uses (a comparison, a lookup, a default), an import of its module or a reference to its
    class, apart from the defaults allow-listed below. Adding a strategy is its file plus one
    registry line (STYLE.md section 3); no command, preset or evaluation file changes.
(b) The library does not depend on its command lines: s2s/ imports nothing from experiments/ or
    evaluation/, and evaluation/ and bench/ import nothing from experiments/.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from s2s.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("experiments", "evaluation", "bench", "s2s")
STRATEGY_DIR = Path("s2s/strategies")

# (file, enclosing class/function, strategy name): the only places code outside s2s/strategies/ may
# name a strategy. Each is a default, not a special case; an entry that no longer matches fails too.
ALLOWED = {
    # ExperimentConfig.strategy_name's default: the card's model, what a config without a strategy means.
    ("s2s/experiment_config.py", "ExperimentConfig", "adapter_stage1"),
    # The benchmarks measure one fixed model (the trainer and the decoder are strategy-independent):
    # their config, and the titles they print, name it.
    ("bench/_common.py", "tiny_config", "adapter_stage1"),
    ("bench/generation.py", "main", "adapter_stage1"),
    ("bench/trainer_step.py", "main", "adapter_stage1"),
    ("bench/full_size.py", "main", "adapter_stage1"),
}

# Keyword arguments whose text is documentation for the user (argparse), not something the code acts on.
DOC_KEYWORDS = {"help", "description", "usage", "epilog"}


def python_files(*dirs: str) -> list[Path]:
    """The .py files under `dirs` (relative to the repo), without s2s/strategies/."""
    return sorted(p.relative_to(REPO) for d in dirs for p in (REPO / d).rglob("*.py")
                  if not p.relative_to(REPO).is_relative_to(STRATEGY_DIR))


def parse(path: Path, root: Path = REPO) -> ast.Module:
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):  # each node knows its enclosing class or function
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
    return tree


def scope(node: ast.AST) -> str:
    """The name of the innermost class or function around `node` ("<module>" at the top level)."""
    while (node := getattr(node, "parent", None)) is not None:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name
    return "<module>"


def documentation(tree: ast.Module) -> set[int]:
    """ids of the nodes that are documentation: docstrings and argparse help/description/usage/epilog
    values (with everything inside them, e.g. the parts of an f-string)."""
    docs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                docs.add(id(first.value))
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in DOC_KEYWORDS:
                    docs.update(id(sub) for sub in ast.walk(kw.value))
    return docs


def strategy_mentions(path: Path, root: Path = REPO) -> list[tuple[int, str, str, str]]:
    """(line, enclosing scope, strategy name, what) for each place the code of `path` names a strategy:
    a string constant containing its name as a word (outside documentation), an import of its module,
    or a reference to its class."""
    names = list(STRATEGIES)
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])")
    classes = {cls.__name__: name for name, cls in STRATEGIES.items()}
    tree = parse(path, root)
    docs = documentation(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += [(node.lineno, scope(node), m, repr(node.value[:80])) for m in set(word.findall(node.value))]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            imported = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for part in {p for m in modules for p in m.split(".")} | set(imported):
                if part in names or part in classes:
                    found.append((node.lineno, scope(node), classes.get(part, part), ast.unparse(node)))
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append((node.lineno, scope(node), classes[node.id], node.id))
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append((node.lineno, scope(node), classes[node.attr], ast.unparse(node)))
    return found


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, including importlib.import_module("...")
    and __import__("...") with a literal name (relative imports stay inside their package)."""
    out = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str):
            fn = node.func
            if (isinstance(fn, ast.Attribute) and fn.attr == "import_module") or \
                    (isinstance(fn, ast.Name) and fn.id in ("import_module", "__import__")):
                out.append((node.lineno, node.args[0].value))
    return out


# --- (a) strategy names only where they belong ----------------------------------------------------

def test_the_scan_sees_names_in_code_and_not_in_documentation(tmp_path):
    """The rule itself, on a file written for it: code is flagged, documentation is not."""
    name, cls = next(iter(STRATEGIES.items()))
    source = f'''"""Module docstring: python -m experiments.run {name}"""
import argparse
from s2s.strategies.{name} import {cls.__name__}


def f(cfg):
    """{name} in a docstring."""
    # {name} in a comment
    parser = argparse.ArgumentParser(description=f"e.g. {name} ({{cfg}})", epilog="{name}")
    parser.add_argument("x", help="{name} or another")
    if cfg.strategy_name == "{name}":
        return {cls.__name__}
    return f"{{cfg}}/{name}x", "x{name}", "{name}:key=1"
'''
    (tmp_path / "probe.py").write_text(source)
    found = sorted((line, what) for line, _, n, what in strategy_mentions(Path("probe.py"), tmp_path) if n == name)
    assert [line for line, _ in found] == [3, 3, 11, 12, 13], found  # import (module, class), ==, class, "NAME:"


def test_no_strategy_name_outside_the_strategies_and_allowed_defaults():
    files = python_files(*SCANNED)
    assert len(files) > 20 and Path("s2s/experiment_config.py") in files
    mentions = {(str(p), line, where, name, what) for p in files for line, where, name, what in strategy_mentions(p)}
    violations = sorted(m for m in mentions if (m[0], m[2], m[3]) not in ALLOWED)
    assert not violations, "strategy names in code outside s2s/strategies/ (file, line, scope, name, text):\n" + \
        "\n".join(map(str, violations))
    stale = ALLOWED - {(m[0], m[2], m[3]) for m in mentions}
    assert not stale, f"allow-list entries that match nothing any more (remove them): {sorted(stale)}"


# --- (b) the library does not import its command lines ---------------------------------------------

@pytest.mark.parametrize("package,forbidden", [("s2s", ("experiments", "evaluation")),
                                               ("evaluation", ("experiments",)),
                                               ("bench", ("experiments",))])
def test_no_import_from_the_layers_above(package, forbidden):
    files = sorted(p.relative_to(REPO) for p in (REPO / package).rglob("*.py"))
    assert files
    bad = [(str(p), line, module) for p in files for line, module in imported_modules(p)
           if module.split(".")[0] in forbidden]
    assert not bad, f"{package}/ imports from {' or '.join(forbidden)}/: {bad}"
