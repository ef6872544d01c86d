"""Packaging: every import is declared, requirements*.txt agree with pyproject.toml, and the package
installs (wheel and editable) and runs from outside the checkout.

The install tests build from a copy of the package files in tmp_path, so the checkout gets no build/ or
*.egg-info, and use --no-deps --no-build-isolation in a venv that sees this environment's packages:
nothing is downloaded. Deselect them with `-m "not slow"`.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = [REPO / "flowerdemo"]
APP = [REPO / "app.py", REPO / "ui"]
SUBCOMMANDS = {"train", "evaluate", "predict", "experiment"}


# --- pyproject.toml and requirements files ------------------------------------------------------------------------


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+ or tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _norm(name: str) -> str:
    """PEP 503 name: `Pillow`, `huggingface_hub` and `huggingface-hub` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _canonical(requirements: list[str]) -> list[str]:
    """Requirement strings in one spelling (name, extras, sorted specifiers, marker), sorted."""
    Requirement = pytest.importorskip("packaging.requirements").Requirement
    out = []
    for line in requirements:
        req = Requirement(line)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{_norm(req.name)}{extras}{req.specifier}{marker}")
    return sorted(out)


def _requirements_file(path: Path) -> tuple[list[str], list[str]]:
    """(requirement lines, option lines such as `-r requirements.txt`), comments dropped."""
    reqs, options = [], []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        (options if line.startswith("-") else reqs).append(line)
    return reqs, options


def _declared(*extras: str) -> set[str]:
    project = _pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return {_norm(re.match(r"[A-Za-z0-9._-]+", line.strip()).group(0)) for line in lines}


def test_requirements_txt_is_the_runtime_dependencies():
    """A Space installs requirements.txt, `pip install .` reads pyproject: the two must not drift."""
    reqs, options = _requirements_file(REPO / "requirements.txt")
    assert not options, f"requirements.txt should hold plain requirements only, found {options}"
    assert _canonical(reqs) == _canonical(_pyproject()["project"]["dependencies"])


def test_requirements_dev_txt_is_the_dev_extra():
    reqs, options = _requirements_file(REPO / "requirements-dev.txt")
    assert options == ["-r requirements.txt"]
    assert _canonical(reqs) == _canonical(_pyproject()["project"]["optional-dependencies"]["dev"])


# --- imports ---------------------------------------------------------------------------------------------------------


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level names of third-party modules imported by these files (or the .py files under these folders),
    mapped to the files that import them. Imports inside `try: ... except ImportError` are optional
    (e.g. `spaces`, present only on a Hugging Face Space) and left out."""
    local = {p.stem for p in REPO.glob("*.py")} | {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    # scripts/ and benchmarks/ modules, which their tests import after putting the folder on sys.path
    local |= {p.stem for folder in ("scripts", "benchmarks") for p in (REPO / folder).glob("*.py")}
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]
    found: dict[str, set[str]] = {}

    def visit(node: ast.AST, guarded: bool, path: Path) -> None:
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                visit(child, True, path)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded, path)
            return
        if not guarded:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - local:
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, path)

    for f in files:
        visit(ast.parse(f.read_text(), str(f)), False, f)
    return found


def _undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    providers = md.packages_distributions()
    problems = []
    for module, where in sorted(imports.items()):
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {sorted(where)}) is provided by no installed distribution")
        elif not dists & declared:
            problems.append(f"{module} (imported by {sorted(where)}) comes from {sorted(dists)}, not declared")
    return problems


def test_every_import_of_the_package_and_app_is_a_declared_dependency():
    export = REPO / "flowerdemo" / "export"
    imports = _imports(LIBRARY + APP)
    assert {"torch", "PIL", "cv2", "gradio"} <= imports.keys()  # the scan sees imports at all
    assert "spaces" not in imports  # guarded: optional
    outside_export = {m: {w for w in where if not w.startswith("flowerdemo/export/")} for m, where in imports.items()}
    assert _undeclared({m: w for m, w in outside_export.items() if w}, _declared()) == []
    # flowerdemo/export may also use the `onnx` extra (it says how to install it when it is missing)
    assert {"onnx", "onnxruntime"} <= _imports([export]).keys()
    assert _undeclared(_imports([export]), _declared("onnx")) == []


def test_every_import_of_the_tests_is_declared_or_comes_with_a_declared_package():
    """Tests may also use what a declared package requires itself (gradio brings gradio_client and httpx)."""
    declared = _declared("dev")
    Requirement = pytest.importorskip("packaging.requirements").Requirement
    brought = set()
    for dist in declared:
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        brought |= {_norm(Requirement(r).name) for r in requires if "extra" not in str(Requirement(r).marker)}
    assert _undeclared(_imports([REPO / "tests"]), declared | brought) == []


# --- install into a fresh venv -------------------------------------------------------------------------------------


def _venv(path: Path) -> tuple[Path, dict[str, str]]:
    """A venv that sees this interpreter's packages (torch etc. are not installed again), and the environment
    to run it in: no PYTHONPATH, so nothing can import the checkout by accident."""
    venv = pytest.importorskip("venv", reason="the venv module is not available")
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the build backend; pip install -r requirements-dev.txt)")
    setuptools_major = int(md.version("setuptools").split(".")[0])
    if setuptools_major < 77:
        pytest.skip(f"setuptools {md.version('setuptools')} is older than pyproject's build requirement (>=77)")
    try:
        venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    except Exception as exc:  # e.g. a Python built without venv support
        pytest.skip(f"cannot create a venv: {exc}")
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # --system-site-packages gives the *base* interpreter's packages; when these tests run inside a venv, that venv's
    # packages are the ones with torch and pip, so add them too.
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "_outer_site.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return python, env


def _run(args: list, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _copy_package(dest: Path) -> Path:
    """What a build from the checkout sees: pyproject.toml, README.md and the top-level modules and packages
    (the app and tests too, so that packaging them by mistake shows; not checkpoints, docs or benchmarks)."""
    dest.mkdir()
    names = ["pyproject.toml", "README.md"] + [p.name for p in REPO.glob("*.py")]
    names += [p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()]
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _pip_install(python: Path, env: dict[str, str], *args: str) -> None:
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *args],
         env, cwd=args[-1])


@pytest.mark.slow
def test_installed_package_runs_from_anywhere(tmp_path):
    python, env = _venv(tmp_path / "venv")
    src = _copy_package(tmp_path / "src")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip_install(python, env, str(src))

    usage = _run([python.parent / "flowerdemo", "--help"], env, cwd=elsewhere)
    choices = re.search(r"\{([\w,-]+)\}", usage)
    assert choices and SUBCOMMANDS <= set(choices.group(1).split(",")), usage

    out = _run([python, "-c", "import flowerdemo, flowerdemo.train.engine; print(flowerdemo.__file__)"],
               env, cwd=elsewhere)
    installed = Path(out.strip().splitlines()[-1]).resolve()
    assert installed.is_relative_to((tmp_path / "venv").resolve()), f"imported {installed}, not the venv's copy"
    site_packages = installed.parents[1]
    # Only the library is installed: the app (app.py, ui/) and the tests stay in the checkout.
    assert not {"ui", "app.py", "tests"} & {p.name for p in site_packages.iterdir()}

    # --no-deps skipped the resolver: check here that what the wheel declares is what this environment has.
    Requirement = pytest.importorskip("packaging.requirements").Requirement
    dist = next(md.distributions(name="flowerdemo", path=[str(site_packages)]))
    import flowerdemo

    assert dist.version == flowerdemo.__version__
    unmet = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} (installed: {have})")
    assert unmet == []


@pytest.mark.slow
def test_editable_install_imports_the_source_tree(tmp_path):
    python, env = _venv(tmp_path / "venv")
    src = _copy_package(tmp_path / "src")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip_install(python, env, "-e", str(src))
    (src / "flowerdemo" / "_added_after_install.py").write_text("VALUE = 42\n")  # edits show without reinstalling

    code = "import flowerdemo, flowerdemo._added_after_install as m; print(m.VALUE, flowerdemo.__file__)"
    out = _run([python, "-c", code], env, cwd=elsewhere)
    value, path = out.split()
    assert value == "42"
    assert Path(path).resolve() == (src / "flowerdemo" / "__init__.py").resolve()
    assert (python.parent / "flowerdemo").exists()  # the console script comes with an editable install too
