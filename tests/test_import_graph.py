"""The layers stay layers: no two parts of alignkit (subpackage or top-level module) import each other.

Every import counts, in-function ones too: a lazy import still makes a cycle, it only hides it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alignkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """The alignkit modules a module imports anywhere in its body (`from pkg import submodule` names the submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}:{node.lineno}: relative import (alignkit imports absolutely)"
            source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):  # some names are attributes of `source` itself
                found.add(source)
    return {m for m in found if m == "alignkit" or m.startswith("alignkit.")}


def part(module: str) -> str:
    """The layer a module belongs to: its subpackage (alignkit.rl) or itself when top-level (alignkit.preflight)."""
    return ".".join(module.split(".")[:2])


def part_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the module-level edges behind it ('alignkit.x.y -> alignkit.z')."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in MODULES:
        for target in imported_modules(name):
            a, b = part(name), part(target)
            if a != b and "alignkit" not in (a, b):
                graph[a][b].append(f"{name} -> {target}")
    return graph


def test_the_walk_sees_imports_at_the_top_in_functions_and_of_submodules():
    # The checker itself: a known import of each kind in the real tree is found.
    assert "alignkit.config.registry" in imported_modules("alignkit.stages")  # top of module
    assert "alignkit.world.oracle" in imported_modules("alignkit.stages.evaluate")  # from-import of a submodule
    assert "alignkit.stages.lifecycle" in imported_modules("alignkit.cli")  # inside a function (CLI boundary)
    assert part("alignkit.rl.trainer") == "alignkit.rl" and part("alignkit.preflight") == "alignkit.preflight"


def test_no_two_parts_of_alignkit_import_each_other():
    graph = part_graph()
    mutual = sorted(
        f"{a} <-> {b}: " + "; ".join(graph[a][b] + graph[b][a])
        for a in graph for b in graph[a] if a < b and a in graph.get(b, {}))
    assert not mutual, "\n".join(mutual)


def test_config_is_below_the_stages_and_libraries():
    # The recipe schema is read by everything; it imports none of the layers that read recipes.
    above = {"alignkit.stages", "alignkit.rl", "alignkit.data", "alignkit.preflight", "alignkit.pipeline",
             "alignkit.eval", "alignkit.world", "alignkit.cli"}
    imported = set(part_graph()["alignkit.config"])
    assert not imported & above, sorted(imported & above)


def test_the_rl_library_imports_no_stage_eval_or_world_module():
    # The embedded world's oracle reaches the online loop as a rubric handed in by online_stage, as it reaches
    # the eval harness through stages.evaluate; rl importing the world would close rl -> world -> eval -> rl.
    imported = set(part_graph()["alignkit.rl"])
    stage_modules = {"alignkit.online_stage", "alignkit.grpo", "alignkit.rloo", "alignkit.ppo", "alignkit.stages"}
    assert not imported & ({"alignkit.world", "alignkit.eval"} | stage_modules), sorted(imported)


def test_the_world_generator_imports_no_model_code():
    # The research tools that sample models (probe, annotate) live in alignkit.research, not in the generator.
    imported = set(part_graph()["alignkit.world"])
    assert imported <= {"alignkit.errors"}, sorted(imported)
