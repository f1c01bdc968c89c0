"""The shape of the code (issue 15): layers imported only downwards, no import cycle,
no plugin importing another, no probe of a specific key class in the core, short
functions, a cheap ``import arena``, and the stable surface and old paths working."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_cycles  # noqa: E402

# Lowest first: a module imports only from its own layer and the layers below.
LAYERS = ("util", "core", "storage", "ownership", "eval", "report", "cli")
# What a plugin (defenses, attacks) may import of the arena: the plugin SDK.
PLUGIN_MAY_IMPORT = ("arena", "arena.util", "arena.core")
MAX_FUNCTION_LINES = 80


def layer_of(module: str) -> int | None:
    """The layer of an ``arena.<layer>...`` module; None for the package's surface."""
    parts = module.split(".")
    if parts[0] != "arena" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def arena_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The arena modules (or packages) ``source`` imports anywhere, local and type-only
    imports included."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
    return {name for name in found if name == "arena" or name.startswith("arena.")}


def wrong_way_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """Each import of ``module`` that goes up a layer, or from a layer to the package's
    surface (``arena``, ``arena._legacy``), as "module -> imported"."""
    own = layer_of(module)
    if own is None:
        return []
    wrong = []
    for imported in sorted(arena_imports(source, module, is_package)):
        target = layer_of(imported)
        if target is None or target > own:
            wrong.append(f"{module} -> {imported}")
    return wrong


def sources(package: str) -> dict[str, Path]:
    return import_cycles.modules([package])


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, path in sources("arena").items():
        wrong += wrong_way_imports(module, path.read_text(), path.name == "__init__.py")
    assert wrong == []


def test_the_layer_check_catches_a_wrong_way_import():
    upward = "from arena.eval.match import run_match\n"
    assert wrong_way_imports("arena.core.plugin", upward) == [
        "arena.core.plugin -> arena.eval.match"
    ]
    assert wrong_way_imports("arena.util.files", "import arena\n") == ["arena.util.files -> arena"]
    local = "def f():\n    from arena.storage import results\n"
    assert wrong_way_imports("arena.core.data", local) == ["arena.core.data -> arena.storage"]
    assert wrong_way_imports("arena.cli.commands", upward) == []


def test_no_import_cycle_counting_local_and_type_only_imports():
    known = import_cycles.modules(["arena", "defenses", "attacks"])
    graph = {name: import_cycles.imports(name, path, known) for name, path in known.items()}
    cycles = [c for c in import_cycles.strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def plugin_modules() -> dict[str, Path]:
    """Modules that register a defense or an attack."""
    found = {}
    for package in ("defenses", "attacks"):
        for module, path in sources(package).items():
            text = path.read_text()
            if "@register_defense(" in text or "@register_attack(" in text:
                found[module] = path
    return found


def test_plugins_import_only_the_sdk_and_shared_helpers_never_another_plugin():
    plugins = plugin_modules()
    assert len(plugins) >= 30
    problems = []
    for package in ("defenses", "attacks"):
        for module, path in sources(package).items():
            known = import_cycles.modules(["defenses", "attacks", "arena"])
            for imported in import_cycles.imports(module, path, known):
                if imported in plugins:
                    problems.append(f"{module} imports the plugin {imported}")
                elif (
                    imported.startswith("arena")
                    and not imported.startswith(PLUGIN_MAY_IMPORT[1:])
                    and imported != "arena"
                ):
                    problems.append(f"{module} imports {imported}, above the plugin SDK")
    assert problems == []


def test_the_core_never_probes_a_specific_key_class():
    probes = []
    for module, path in sources("arena").items():
        if module == "arena.core.keys":  # where the key classes are defined
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                if "Key" in ast.unparse(node.args[1]):
                    probes.append(f"{module}:{node.lineno} {ast.unparse(node)}")
            if node.func.id in ("getattr", "hasattr") and "key" in ast.unparse(node.args[0]):
                probes.append(f"{module}:{node.lineno} {ast.unparse(node)}")
    assert probes == []


def test_every_function_is_shorter_than_80_lines():
    long = []
    for package in ("arena", "defenses", "attacks"):
        for module, path in sources(package).items():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                    lines = node.end_lineno - first + 1
                    if lines >= MAX_FUNCTION_LINES:
                        long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


def test_importing_a_low_layer_loads_nothing_above_it():
    loaded = _loaded_after("import arena.util.paths, arena.util.jsonio")
    assert not {"torch", "scipy", "arena.core", "arena.storage"} & loaded
    loaded = _loaded_after("import arena.storage.results")
    assert "scipy" not in loaded and "arena.core.plugin" not in loaded


def test_the_stable_surface_resolves_every_name():
    import arena

    for name in arena.SURFACE:
        assert getattr(arena, name) is getattr(importlib.import_module(arena.SURFACE[name]), name)
    assert set(arena.__all__) >= set(arena.SURFACE)


def test_old_module_paths_still_work_for_one_release_with_a_warning():
    from arena.core.plugin import Attack
    from arena.storage.results import ResultStore
    from arena.util.jsonio import read_json

    for old in ("arena.plugin", "arena.store", "arena.keys"):
        sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="arena.plugin moved to arena.core.plugin"):
        plugin = importlib.import_module("arena.plugin")
    assert plugin.Attack is Attack
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module("arena.store").ResultStore is ResultStore
        assert importlib.import_module("arena.keys").read_json is read_json
        from arena import ownership

        with pytest.raises(AttributeError):
            importlib.import_module("arena.plugin").NoSuchName  # noqa: B018
    with pytest.warns(DeprecationWarning, match="arena.ownership.keygen moved"):
        assert callable(ownership.keygen)


def test_a_plugin_missing_a_verb_is_refused_when_it_registers():
    from arena.core.plugin import Defense
    from arena.core.registry import Registry
    from arena.util.errors import ArenaError

    registry = Registry("defense", "arena.test.none", "defenses")

    class NoEvidence(Defense):
        def keygen(self, ctx):
            raise AssertionError

        def mark(self, model, key, ctx):
            raise AssertionError

    with pytest.raises(ArenaError, match="'half-done' .*NoEvidence.* does not implement evidence"):
        registry.register("half-done")(NoEvidence)


def test_the_context_is_an_immutable_value_that_never_trains():
    import dataclasses

    from arena.core.context import Context, Victim
    from arena.core.protocols import get_protocol
    from arena.util.errors import ArenaError

    ctx = Context(protocol=get_protocol("smoke"), seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.seed = 4
    with pytest.raises(ArenaError, match="no clean model"):
        ctx.clean_model()  # nobody supplied one: it refuses, it does not train one
    supplied = object()
    assert dataclasses.replace(ctx, clean=lambda: supplied).clean_model() is supplied
    victim = Victim(scheme="a scheme", vk=None, data=ctx.splits.attacker)
    attacked = dataclasses.replace(ctx, victim=victim)
    assert attacked.victim.data is ctx.splits.attacker and ctx.victim is None


def test_release_0_1_context_fields_still_read_for_one_release_with_a_warning():
    import dataclasses

    from arena.core.context import Context, Victim
    from arena.core.protocols import get_protocol

    ctx = dataclasses.replace(
        Context(protocol=get_protocol("smoke")), victim=Victim("scheme", Path("vk.json"))
    )
    with pytest.warns(DeprecationWarning, match="victim_scheme moved to Context.victim.scheme"):
        assert ctx.victim_scheme == "scheme"
    with pytest.warns(DeprecationWarning, match="victim_vk moved"):
        assert ctx.victim_vk == Path("vk.json")


def test_every_name_contributing_imports_from_arena_is_on_the_stable_surface():
    """A contributor copies CONTRIBUTING's imports: each must exist, without a warning."""
    import re

    import arena

    guide = (ROOT / "CONTRIBUTING.md").read_text()
    imported = set()
    for block in re.findall(r"```python\n(.*?)```", guide, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "arena":
                imported.update(alias.name for alias in node.names)
    assert len(imported) >= 10
    assert sorted(imported - set(arena.__all__)) == []
