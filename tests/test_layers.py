"""The package's import graph has no cycles, counting imports inside functions too (an import
moved into a function to dodge a cycle is still a cycle), and the bottom layers import nothing above them."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "taosr")


def _module(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph() -> dict[str, set[str]]:
    mods = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                mods[_module(os.path.join(d, f))] = os.path.join(d, f)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(open(path).read())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taosr") and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("taosr")]
            for n in names:
                if n in mods and n != m:
                    graph[m].add(n)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def closure(graph, m):
    seen, todo = set(), [m]
    while todo:
        for n in graph[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_bottom_layers_import_only_the_bottom():
    g = import_graph()
    bottom = {"taosr", "taosr.errors", "taosr.labels", "taosr.registry", "taosr.schema"}
    for m in bottom - {"taosr"}:
        assert closure(g, m) <= bottom, (m, closure(g, m) - bottom)
    # the prompt-fitting rule stands on the schema alone (the GRM layout fits its input by it, as the data does)
    assert closure(g, "taosr.data.budget") <= bottom, closure(g, "taosr.data.budget") - bottom
    # the text format, the verifier and the GRM layout stand on the schema, prompts and that rule only
    allowed = bottom | {"taosr.prompts", "taosr.reasoning", "taosr.reasoning.format", "taosr.reasoning.verifier",
                        "taosr.reasoning.grm_layout", "taosr.data", "taosr.data.budget"}
    for m in ("taosr.reasoning.format", "taosr.reasoning.verifier", "taosr.reasoning.grm_layout", "taosr.prompts"):
        assert closure(g, m) <= allowed, (m, closure(g, m) - allowed)
    # the training parts (layer 4) import nothing of the Lightning layer or above (the view check found
    # the curriculum's callback by importing it; it reads the callback's advances_curriculum now)
    upper = ("taosr.callbacks", "taosr.methods", "taosr.launcher", "taosr.cli", "taosr.pipeline", "taosr.compare",
             "taosr.sweep")
    for m in (n for n in g if n.startswith(("taosr.data", "taosr.models", "taosr.rl", "taosr.eval", "taosr.losses"))):
        assert not {n for n in closure(g, m) if n.startswith(upper)}, (m, {n for n in closure(g, m) if n.startswith(upper)})
    # losses and advantages are pure: no data, models, methods or callbacks
    for m in ("taosr.losses.policy", "taosr.losses.dpo", "taosr.losses.sft", "taosr.rl.advantages", "taosr.rl.examiner"):
        assert not {n for n in closure(g, m) if n.startswith(("taosr.data", "taosr.methods", "taosr.callbacks",
                                                               "taosr.models", "taosr.cli", "taosr.pipeline"))}, m
