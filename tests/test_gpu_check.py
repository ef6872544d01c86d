"""scripts/gpu-check.sh, the one command for the GPU machine: its dry run (every step, tiny, on the CPU) so the
script cannot rot before a GPU is lent, the shell wrapper, time limits, failing and skipped steps, the plan's
settings (the report's recipe) and how the targets are judged."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402
import gpu_check_env  # noqa: E402
import gpu_check_report  # noqa: E402

BENCH_STEPS = {"recipe": "recipe.json", "speed-resnet": "speed-resnet.json", "latency": "latency.json",
               "fast": "fast.json", "speed-lite0": "speed-lite0.json"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The driver's dry run, every step inside this process (no interpreter start-up per step)."""
    root = tmp_path_factory.mktemp("gpu-check")
    out, work = root / "out", root / "work"
    rc = gpu_check.main(["--dry-run", "--in-process", "--out", str(out), "--work", str(work)])
    return rc, out, work, json.loads((out / "summary.json").read_text())


def test_dry_run_runs_every_step_ok_on_the_cpu(dry_run):
    rc, out, _, summary = dry_run
    steps = {s["step"]: s for s in summary["steps"]}
    assert [s["step"] for s in summary["steps"]] == list(gpu_check.STEP_NAMES)
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(gpu_check.STEP_NAMES, "ok"), \
        (out / "steps.log").read_text()[-3000:]
    assert rc == 0 and summary["ok"] and summary["dry_run"]
    assert steps["data"]["data"]["source"] == "synthetic" and steps["data"]["data"]["classes"] == 5
    for name in BENCH_STEPS:  # the steps that need CUDA on the GPU machine ran on the CPU, and say so
        assert steps[name]["device"] == "cpu", name
    assert steps["cuda-tests"]["figures"]["collected"] >= 1  # the `cuda` marker selects tests (skipped here)


def test_dry_run_writes_each_benchmark_json_and_the_key_figures(dry_run):
    _, out, _, summary = dry_run
    steps = {s["step"]: s for s in summary["steps"]}
    for name, file in BENCH_STEPS.items():
        payload = json.loads((out / file).read_text())
        assert steps[name]["json"] == file and payload["settings"]["device"] == "cpu"
    speed = steps["speed-resnet"]["figures"]
    assert speed["plain"]["train_img_s"] > 0 and speed["full"]["train_img_s"] > 0
    assert speed["full"]["img_s_vs_plain"] == pytest.approx(speed["full"]["train_img_s"] / speed["plain"]["train_img_s"],
                                                           abs=0.01)
    recipe = steps["recipe"]["figures"]["full"]
    assert recipe["wall_s"] >= recipe["fit_s"] > 0 and recipe["finish_s"] >= 0
    assert steps["fast"]["figures"]["fast"]["wall_s"] > 0
    cases = steps["latency"]["figures"]["p50_ms"]
    assert {"small predict", "small gradcam", "12 MP predict", "12 MP gradcam"} <= set(cases)
    assert set(summary["targets"]) == {"recipe_wall_s", "recipe_img_s_vs_plain"}


def test_dry_run_output_fits_the_device_tool_and_holds_no_machine_paths(dry_run):
    _, out, work, _ = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # what the device tool brings back
    assert {"summary.json", "steps.log", *BENCH_STEPS.values()} == set(files)
    for name in files:
        if name.endswith(".json"):
            text = (out / name).read_text()
            assert str(work) not in text and str(out) not in text, name


def test_shell_wrapper_runs_the_driver_in_subprocesses(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--dry-run", "--steps", "data",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [("data", "ok")]
    assert summary["data"]["images"] == 17 and summary["data"]["size"] == "227x227"
    assert "GPU check summary" in proc.stdout  # the table the device tool's output tail shows


def test_default_out_is_OUT_when_set(monkeypatch):
    monkeypatch.setenv("OUT", "/somewhere/out")
    assert gpu_check.parse_args([]).out == Path("/somewhere/out")
    monkeypatch.delenv("OUT")
    assert gpu_check.parse_args([]).out == Path("gpu-check-results")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_step_past_its_limit_is_ended_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    t = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        status, rc = gpu_check_env.run_command([sys.executable, "-c", code], log, timeout=2)
    assert status == "timeout" and rc is None and time.perf_counter() - t < 15
    child = Path(f"/proc/{pid_file.read_text()}/stat")
    for _ in range(50):  # the step's own subprocess was ended too (gone, or a zombie nobody has reaped yet)
        if not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's child process is still running")


def _runner(tmp_path, *extra: str) -> gpu_check.Runner:
    args = gpu_check.parse_args(["--out", str(tmp_path / "out"), *extra])
    args.out.mkdir()
    return gpu_check.Runner(args, tmp_path)


def test_failing_missing_and_late_steps_are_recorded_and_the_rest_still_run(tmp_path):
    runner = _runner(tmp_path, "--dry-run")
    runner.probe = {"missing": {"pytorch_grad_cam": "pytorch_grad_cam"}}
    runner.step(gpu_check.Step("boom", ("-c", "print('about to fail'); raise SystemExit(3)"), 30), True)
    runner.step(gpu_check.Step("needs-cam", ("-c", "pass"), 30, ("pytorch_grad_cam",)), True)
    runner.step(gpu_check.Step("trains", ("-c", "pass", "--data", "x"), 30), False)
    runner.step(gpu_check.Step("fine", ("-c", "print('hello')"), 30), True)
    runner.deadline = time.monotonic() + 5  # less than a step is started with
    runner.step(gpu_check.Step("late", ("-c", "pass"), 30), True)
    got = {o["step"]: (o["status"], o["note"]) for o in runner.outcomes}
    assert got["boom"] == ("failed", "about to fail")
    assert got["needs-cam"][0] == "skipped" and "pytorch_grad_cam" in got["needs-cam"][1] and "--prepare" in got["needs-cam"][1]
    assert got["trains"] == ("skipped", "no data: the data step failed")
    assert got["fine"] == ("ok", "")
    assert got["late"][0] == "skipped" and "out of time" in got["late"][1]
    assert "hello" in (tmp_path / "out" / "steps.log").read_text()


def test_a_real_run_without_cuda_skips_the_gpu_steps(tmp_path):
    runner = _runner(tmp_path)
    runner.probe = {"cuda_available": False, "missing": {}}
    runner.step(gpu_check.Step("recipe", ("-c", "pass"), 30), True)
    assert runner.outcomes[0]["status"] == "skipped" and "no CUDA" in runner.outcomes[0]["note"]


def test_the_real_plan_is_the_reports_recipe_and_the_issues_comparisons(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    steps = {s.name: s.argv for s in gpu_check.plan(args, tmp_path / "data", False, tmp_path)}
    assert list(steps) == [s for s in gpu_check.STEP_NAMES if s not in ("setup", "data")]

    def opt(argv, name):
        return argv[argv.index(name) + 1]

    recipe = steps["recipe"]
    # ResNet-50 random init, 50 epochs, the engine's full mode; batch size, optimiser, schedule and
    # augmentations are TrainConfig's defaults (the report's 32, AdamW, warm-up + cosine, its five augmentations)
    assert (opt(recipe, "--model"), opt(recipe, "--epochs"), opt(recipe, "--variants")) == ("resnet50", "50", "full")
    assert "--no-pretrained" in recipe and "--batch-size" not in recipe and "--image-size" not in recipe
    assert opt(steps["speed-resnet"], "--variants") == "plain,full" and opt(steps["speed-resnet"], "--model") == "resnet50"
    assert opt(steps["fast"], "--variants") == "fast" and opt(steps["fast"], "--epochs") == "20"
    assert all(opt(a, "--device") == "cuda" and "--in-process" not in a for n, a in steps.items() if n != "cuda-tests")
    assert opt(steps["latency"], "--checkpoint") == gpu_check.CHECKPOINT and (REPO / gpu_check.CHECKPOINT).is_dir()
    assert "tests/test_cuda.py" in steps["cuda-tests"]


@pytest.mark.parametrize(("wall", "recipe_img_s", "met"), [(59.9, 500.0, (True, True)), (60.1, 499.0, (False, False))])
def test_targets_are_judged_from_the_recipe_and_the_plain_loop(wall, recipe_img_s, met):
    outcomes = [{"step": "recipe", "figures": {"full": {"wall_s": wall, "train_img_s": recipe_img_s}}},
                {"step": "speed-resnet", "figures": {"plain": {"train_img_s": 100.0}}}]
    t = gpu_check_report.targets(outcomes)
    assert (t["recipe_wall_s"]["met"], t["recipe_img_s_vs_plain"]["met"]) == met
    assert t["recipe_img_s_vs_plain"]["value"] == pytest.approx(recipe_img_s / 100, abs=0.01)
