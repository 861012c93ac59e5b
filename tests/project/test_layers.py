"""The layers of the code base: imports point only downwards, the API process starts without torch, and every
screening command takes the same engine flags."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import build_parser
from cli.engine_flags import engine_overrides, parse_value
from phasecore.settings import EngineSettings

REPO = Path(__file__).resolve().parents[2]

# bottom to top; a module may import its own layer or any layer below it. ``problems`` (RFC 9457 documents) is the
# lowest layer above the engine: it turns the engine's domain errors into problems, and every layer above builds them
LAYERS = {"phasecore": 0, "problems": 1, "store": 2, "jobs": 3, "service": 4, "worker": 4, "cli": 5}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports at run time, wherever the import statement is (``TYPE_CHECKING`` excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path
        for top in LAYERS
        for path in (REPO / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    return {name: {m for m in _imports(path, name) if m in modules} for name, path in modules.items()}


def test_imports_point_only_downwards() -> None:
    upward = [
        f"{module} ({module.partition('.')[0]}) imports {target} ({target.partition('.')[0]})"
        for module, targets in _graph().items()
        for target in targets
        if LAYERS[target.partition(".")[0]] > LAYERS[module.partition(".")[0]]
    ]
    assert not upward, "\n".join(upward)


def _loops(edges: dict[str, set[str]]) -> list[str]:
    """Every loop a depth-first walk of ``edges`` meets, each as ``a -> b -> a``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                loops.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return loops


def test_no_module_imports_one_that_imports_it_back() -> None:
    # a package's __init__ re-exporting its own modules is not a cycle
    edges = {
        module: {t for t in targets if t != module and not t.startswith(module + ".")}
        for module, targets in _graph().items()
    }
    cycles = _loops(edges)
    assert not cycles, "\n".join(cycles)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports inside functions and relative ones, so the two tests above can fail."""
    source = tmp_path / "jobs" / "example.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from service.app import create_app\n\nfrom .queue import JobRef\n")
    found = _imports(source, "jobs.example")
    assert {"service.app", "service.app.create_app", "jobs.queue", "jobs.queue.JobRef"} <= found


_LIGHT_API = """
import json, sys
from pathlib import Path
from service.app import create_app
from store.settings import ServiceSettings
from service.schemas import ScreeningRequest
from service.screenings import normalize_request
from phasecore.errors import PhasescreenError
from phasecore.references.registry import check_reference

home = Path(sys.argv[1])
settings = ServiceSettings(home=home, model_root=home, database_url=None, redis_url=None)
app = create_app(settings)
seen = {"app": [m for m in ("torch", "timm", "transformers") if m in sys.modules]}
check_reference("timm:resnet18?weights=random", "vision", allowed_sources=settings.allowed_sources)
check_reference("pkg:all-minilm-l6-v2", "language", model_root=home)
errors = []
for bad in ("timm:resnet_999", "pkg:nope", "file:../escape", "nosource:x"):
    try:
        check_reference(bad, "vision", model_root=home)
    except PhasescreenError as exc:
        errors.append(type(exc).__name__)
request = ScreeningRequest.model_validate(
    {"vision": " timm:resnet18@a1_in1k ", "language": "hf:gpt2?pooling=last", "dataset": "digits"}
)
try:
    normalize_request(request.model_copy(update={"vision": "timm:vit_huge_patch99"}), settings)
except PhasescreenError as exc:
    errors.append(str(exc))
for dataset in ("digits", "shapes?colors=3&shapes=3&size=32"):  # valid: the dataset is checked too
    normalize_request(
        ScreeningRequest.model_validate(
            {"vision": "pkg:efficientnet-lite0", "language": "pkg:all-minilm-l6-v2", "dataset": dataset,
             "options": {"n": 64, "seed": 3}}
        ),
        settings,
    )
seen["checks"] = [m for m in ("torch", "timm", "transformers") if m in sys.modules]
app.state.runtime.close()
print(json.dumps({"seen": seen, "errors": errors}))
"""


def test_the_api_process_starts_and_checks_references_without_torch(tmp_path: Path) -> None:
    """``phasescreen serve`` builds the app, parses references and runs the sources' checks and the dataset's
    with no torch, timm or transformers imported: a light process that answers a typo at once."""
    run = subprocess.run(
        [sys.executable, "-c", _LIGHT_API, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["seen"] == {"app": [], "checks": []}
    assert report["errors"][:4] == ["InvalidReference", "InvalidReference", "SourceNotAllowed", "InvalidReference"]
    assert "not in the timm registry" in report["errors"][4]


def test_the_timm_names_read_from_source_are_timm_s_registry() -> None:
    import timm

    from phasecore.references.registry import timm_model_names

    assert timm_model_names() == frozenset(timm.list_models())


_SCREENING_COMMANDS = {
    "screen": ["screen", "--vision", "timm:resnet18", "--language", "pkg:all-minilm-l6-v2"],
    "gate": ["gate", "--vision", "timm:resnet18", "--language", "pkg:all-minilm-l6-v2", "--dataset", "digits"],
    "batch": ["batch", "grid.yaml"],
}


@pytest.mark.parametrize("command", sorted(_SCREENING_COMMANDS))
def test_every_screening_command_takes_the_engine_flags(command: str) -> None:
    args = build_parser().parse_args(
        [
            *_SCREENING_COMMANDS[command],
            "--n",
            "60",
            "--probes",
            "exact",
            "--params",
            "last:2",
            "--no-ground-truth",
            "--stability-lr-scales",
            "[0.5, 2]",
            "--option",
            "knn_k=5",
            "--option",
            "gt-method=procrustes",
            "--option",
            "language_pooling=null",
        ]
    )
    settings = EngineSettings.model_validate(engine_overrides(args))
    expected = {"n": 60, "probes": "exact", "params": "last:2", "ground_truth": False, "knn_k": 5}
    assert {k: getattr(settings, k) for k in expected} == expected
    assert settings.gt_method == "procrustes" and settings.language_pooling is None
    assert settings.stability_lr_scales == (0.5, 1.0, 2.0)


def test_every_engine_setting_has_a_flag_on_every_screening_command() -> None:
    parser = build_parser()
    for command, argv in _SCREENING_COMMANDS.items():
        for name, field in EngineSettings.model_fields.items():
            flag = "--" + name.replace("_", "-")
            default = field.default
            text = (
                default
                if isinstance(default, str)
                else json.dumps(list(default) if isinstance(default, tuple) else default)
            )
            given = engine_overrides(
                parser.parse_args([*argv, flag] if field.annotation is bool else [*argv, flag, text])
            )
            assert list(given) == [name], (command, flag)
            assert EngineSettings.model_validate(given) == EngineSettings(
                **({name: True} if field.annotation is bool else {})
            ), (command, flag)


def test_flags_not_given_leave_the_settings_to_the_grid_and_the_defaults() -> None:
    args = build_parser().parse_args(_SCREENING_COMMANDS["batch"])
    assert engine_overrides(args) == {}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("exact", "exact"),
        ("last:2", "last:2"),
        ("nonsense", "nonsense"),
        ("-x", "-x"),
        ("ridge", "ridge"),
    ],
)
def test_one_value_parser(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_a_malformed_option_is_a_usage_error() -> None:
    args = build_parser().parse_args([*_SCREENING_COMMANDS["gate"], "--option", "knn_k"])
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        engine_overrides(args)


def _engine_subpackage(module: str, subpackages: set[str]) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "phasecore" and len(parts) > 1 and parts[1] in subpackages else None


def test_engine_subpackages_form_no_loop() -> None:
    """Above module level: no two subpackages of ``phasecore`` import each other, directly or round a ring, so the
    engine reads bottom to top (the package's top-level modules, such as ``paper`` and ``errors``, sit under all)."""
    graph = _graph()
    subpackages = {name.split(".")[1] for name in graph if name.startswith("phasecore.") and name.count(".") > 1}
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = _engine_subpackage(module, subpackages)
        for target in targets:
            sink = _engine_subpackage(target, subpackages)
            if source and sink and sink != source:
                edges.setdefault(source, set()).add(sink)
    loops = _loops(edges)
    assert not loops, "\n".join(loops)
