"""The module graph: no import cycle among the repository's modules (imports inside functions
counted too, so that none can hide one), and no tool or benchmark imports a script."""
import ast

from conftest import REPO

SCRIPTS = {"main", "train_old_model", "train_new_model"}
PACKAGES = ("utils", "methods", "models", "tools", "benchmarks")


def repository_modules() -> dict:
    """{module name: path} of the scripts and the packages' modules."""
    modules = {name: REPO / f"{name}.py" for name in SCRIPTS}
    for package in PACKAGES:
        for path in (REPO / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imports_of(path, modules) -> set:
    """The repository modules that ``path`` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles():
    modules = repository_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert "utils.data" in graph["utils.runner"]  # the graph is really read


def test_tools_and_benchmarks_never_import_a_script():
    modules = repository_modules()
    for name, path in modules.items():
        if name.startswith(("tools", "benchmarks")):
            assert not imports_of(path, modules) & SCRIPTS, f"{name} imports a script"


# Lower layers never import higher ones (docs/architecture.md): models/ and methods/ know nothing
# of utils/, and a run's parts never import the command line or the runner.
LAYERS = {
    "models": ("utils", "methods", "tools"),
    "methods": ("utils", "models", "tools"),
    "utils": ("utils.cli", "utils.runner", "tools"),
}


def test_lower_layers_never_import_higher_ones():
    modules = repository_modules()
    for name, path in modules.items():
        layer = name.split(".")[0]
        if layer not in LAYERS or name in ("utils.cli", "utils.runner"):
            continue
        above = {m for m in imports_of(path, modules) if m.startswith(LAYERS[layer])} - {name}
        assert not above, f"{name} imports {sorted(above)}"


# The data path, top to bottom (docs/architecture.md, "From a folder to a batch"): a module imports
# only data modules of a lower rank, never one of its own rank or above, so that a reader who
# starts at utils/data.py only ever goes down; utils/image_files.py, the bottom, imports no torch
# (tools/flips.py reads the test images through it without torch).
DATA_PATH = {
    "utils.data": 5,
    "utils.cifar": 4, "utils.imagenet": 4,
    "utils.pil_pipeline": 3, "utils.features": 3,
    "utils.batches": 2,
    "utils.inputs": 1,
    "utils.image_files": 0,
}


def data_path_violations(graph: dict) -> list:
    """The imports of ``graph`` ({module: the repository modules it imports}) that go sideways
    or up the data path."""
    return [f"{name} imports {dep}" for name, rank in DATA_PATH.items() for dep in sorted(graph[name])
            if dep in DATA_PATH and DATA_PATH[dep] >= rank]


def third_party_imports(path) -> set:
    """The top-level packages that ``path`` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_data_modules_import_only_downward():
    modules = repository_modules()
    assert set(DATA_PATH) <= set(modules)
    graph = {name: imports_of(modules[name], modules) - {name} for name in DATA_PATH}
    assert not data_path_violations(graph)
    assert {"utils.cifar", "utils.imagenet"} <= graph["utils.data"]  # the graph is really read
    # The check itself: an upward import (inputs -> batches) or a sideways one is caught.
    assert data_path_violations({**graph, "utils.inputs": {"utils.batches"}}) == ["utils.inputs imports utils.batches"]
    assert data_path_violations({**graph, "utils.cifar": {"utils.imagenet"}}) == ["utils.cifar imports utils.imagenet"]
    torch_imports = third_party_imports(modules["utils.image_files"]) & {"torch", "torchvision"}
    assert not torch_imports, f"utils.image_files imports {sorted(torch_imports)}"
    assert graph["utils.image_files"] <= {"utils.errors"}
