"""Resident memory of the running app over an afternoon of use: does it stay bounded?

Starts `python app.py` as a separate process (its settings through FLOWERDEMO_* variables, every
folder in a temporary directory, the shipped model copied in as the only run), warms it up (a few
predictions and one small training), then runs --rounds rounds of: --predictions / rounds
predictions through gradio_client (synthetic photos of varied sizes, Grad-CAM, one new visitor
every 50), then one small training on an uploaded .zip (fast mode, 64 px, --epochs epochs) by a new
visitor, who then predicts with the model they trained. A sampler thread reads the server's resident
set (VmRSS in /proc/<pid>/status; its children's too), threads and open files every --interval
seconds. The target (issue 12): at most +300 MB over the post-warm-up level.

    nice -n 10 python benchmarks/memory.py                                 # 1,000 predictions, 5 trainings
    python benchmarks/memory.py --predictions 50 --rounds 1 --epochs 1     # smoke (a minute or two)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

NAME = "memory"
MB = 1024**2
TARGET_MB = 300
SIZES = (96, 160, 227, 320, 480, 640)  # small photos: what varies is the count, not the size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", type=Path, default=common.REPO / "checkpoints" / "flowers5-lite2",
                   help="run directory served as the default model (copied; default: the shipped model)")
    p.add_argument("--predictions", type=int, default=1000, help="timed-phase predictions in all (default 1,000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each ending with one training (default 5)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up predictions (default 20, plus one training)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per training (default 2)")
    p.add_argument("--cam", default="gradcam", help="CAM method of every prediction (default gradcam)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples (default 0.5)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results file; default benchmarks/results/{NAME}-<timestamp>.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, runs, Gradio cache)")
    args = p.parse_args(argv)
    if args.predictions < 0 or args.rounds < 0 or args.epochs < 1:
        p.error("--predictions and --rounds must be >= 0 and --epochs >= 1")
    return args


# --- the server process -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(root: Path, model: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` with every folder under `root`; returns (process, url) once it answers."""
    import httpx

    checkpoints = root / "checkpoints"
    shutil.copytree(model, checkpoints / model.name)
    port = free_port()
    env = {**os.environ, "FLOWERDEMO_CHECKPOINT_DIR": str(checkpoints), "FLOWERDEMO_WORK_DIR": str(root / "work"),
           "FLOWERDEMO_CACHE": str(root / "cache"), "GRADIO_TEMP_DIR": str(root / "gradio"),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(root / "app.log", "wb")  # noqa: SIM115 - the process writes it until the end
    proc = subprocess.Popen([sys.executable, str(common.REPO / "app.py")], cwd=common.REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: app.py exited with {proc.returncode}; see {root / 'app.log'}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"error: app.py did not answer on {url} within 300 s; see {root / 'app.log'}")


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


class Sampler:
    """The server's RSS (MB), its children's RSS, threads and open files, every `interval` seconds,
    each sample tagged with the phase the benchmark is in."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval, self.phase = pid, interval, "start"
        self.samples: list[dict[str, Any]] = []
        self._t0, self._stop = time.monotonic(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, Any]:
        st = _status(self.pid)
        kids = 0
        for kid in _children(self.pid):
            try:
                kids += _status(kid).get("VmRSS", 0)
            except OSError:
                pass
        row = {"t": round(time.monotonic() - self._t0, 2), "phase": self.phase, "rss_mb": round(st["VmRSS"] / 1024, 1),
               "children_rss_mb": round(kids / 1024, 1), "threads": st["Threads"],
               "open_files": len(os.listdir(f"/proc/{self.pid}/fd"))}
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, KeyError):  # the process is gone
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def level(self, phase: str) -> float:
        """The median RSS of the last few samples of a phase: one number, not one noisy sample."""
        rows = [r["rss_mb"] for r in self.samples if r["phase"] == phase][-5:]
        return statistics.median(rows) if rows else float("nan")


# --- what visitors do -------------------------------------------------------------------------------

def photos(folder: Path, n: int = 60) -> list[Path]:
    from tests.synth import CLASS_STYLES, draw_sample

    folder.mkdir(parents=True, exist_ok=True)
    rng, kinds, out = random.Random(0), list(CLASS_STYLES), []
    for i in range(n):  # distinct files: each upload is a new file for Gradio's cache
        path = folder / f"photo_{i:03d}.jpg"
        draw_sample(kinds[i % len(kinds)], SIZES[i % len(SIZES)], rng).save(path, quality=90)
        out.append(path)
    return out


def dataset_zip(folder: Path, seed: int) -> Path:
    from tests.synth import make_dataset

    data = make_dataset(folder / f"shapes{seed}", per_class=12, size=64, seed=seed)
    path = folder / f"shapes{seed}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(data.rglob("*.png")):
            zf.write(f, f.relative_to(folder).as_posix())
    return path


def client(url: str, downloads: Path):
    import httpx
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False,
                  httpx_kwargs={"timeout": httpx.Timeout(120.0, read=600.0)})


def predict(c, image: Path, cam: str) -> float:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    c.predict(image=handle_file(str(image)), method=cam, api_name="/predict")
    return time.perf_counter() - t0


def train(c, upload: Path, epochs: int) -> float:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    job = c.submit(source="zip", zip_file=handle_file(str(upload)), folder="", backbone="efficientnet_lite0",
                   mode="fast", epochs=epochs, batch_size=8, image_size=64, api_name="/train")
    status = [out[0] for out in job if isinstance(out[0], str)]  # the last update only frees the upload
    if not status or "Done" not in status[-1]:
        raise RuntimeError(f"the training did not finish: {status[-1:]!r}")
    return time.perf_counter() - t0


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB, 1) if path.exists() else 0.0


# --- the run ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    pics = photos(root / "photos")
    proc, url = start_app(root, args.model)
    latencies: list[float] = []
    trainings: list[float] = []
    rounds: list[dict[str, Any]] = []
    n = 0
    try:
        with Sampler(proc.pid, args.interval) as sampler:
            sampler.sample()
            visitor = client(url, root / "downloads")
            sampler.phase = "warm-up"
            for i in range(args.warmup):
                predict(visitor, pics[i % len(pics)], args.cam)
            trainer = client(url, root / "downloads")
            trainings.append(train(trainer, dataset_zip(root / "zips", 100), args.epochs))
            predict(trainer, pics[0], args.cam)  # the visitor's own model, loaded
            time.sleep(3 * args.interval)
            sampler.phase = "warm"
            time.sleep(5 * args.interval)
            warm = sampler.level("warm")
            per_round = args.predictions // max(1, args.rounds)
            for r in range(args.rounds):
                sampler.phase = f"round {r + 1}"
                for _ in range(per_round):
                    if n % 50 == 0:
                        visitor = client(url, root / "downloads")  # a new visitor: a new session
                    latencies.append(predict(visitor, pics[n % len(pics)], args.cam))
                    n += 1
                after_predictions = sampler.sample()["rss_mb"]
                trainer = client(url, root / "downloads")
                trainings.append(train(trainer, dataset_zip(root / "zips", r), args.epochs))
                for i in range(5):
                    latencies.append(predict(trainer, pics[i], args.cam))
                    n += 1
                time.sleep(3 * args.interval)
                rounds.append({"round": r + 1, "predictions_so_far": n, "rss_after_predictions_mb": after_predictions,
                               "rss_after_training_mb": sampler.level(f"round {r + 1}"),
                               "peak_in_round_mb": max(s["rss_mb"] for s in sampler.samples
                                                       if s["phase"] == f"round {r + 1}")})
                print(f"round {r + 1}: {n} predictions, {len(trainings)} trainings, RSS "
                      f"{rounds[-1]['rss_after_training_mb']:,.0f} MB (warm {warm:,.0f} MB)", flush=True)
            sampler.phase = "end"
            time.sleep(5 * args.interval)
            end = sampler.level("end")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    samples = sampler.samples
    return {
        "start_rss_mb": samples[0]["rss_mb"], "warm_rss_mb": warm, "end_rss_mb": end,
        "peak_rss_mb": max(s["rss_mb"] for s in samples), "growth_mb": round(end - warm, 1),
        "target_growth_mb": TARGET_MB, "within_target": end - warm <= TARGET_MB,
        "predictions": n, "trainings_after_warmup": args.rounds,
        "predict_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "training_s": [round(t, 1) for t in trainings],
        "threads_warm_end": [next(s["threads"] for s in samples if s["phase"] == "warm"), samples[-1]["threads"]],
        "open_files_warm_end": [next(s["open_files"] for s in samples if s["phase"] == "warm"),
                                samples[-1]["open_files"]],
        "disk_mb": {"gradio_cache": folder_mb(root / "gradio"), "work": folder_mb(root / "work"),
                    "checkpoints": folder_mb(root / "checkpoints"), "feature_cache": folder_mb(root / "cache")},
        "rounds": rounds, "samples": samples,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.model / "model.safetensors").is_file() and not any(args.model.glob("*.safetensors")):
        sys.exit(f"error: {args.model} is not a run directory with a checkpoint; pass --model RUN")
    root = Path(tempfile.mkdtemp(prefix="flowerdemo-memory-"))
    common.keep_temp_files_in(root / "temp")
    try:
        result = run(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    info = common.machine_info()
    out = common.write_json(args.out, NAME, {"benchmark": NAME, "command": " ".join(sys.argv),
                                             "settings": {k: str(v) for k, v in vars(args).items()},
                                             "machine": info, **result})
    rows = [("start (after launch)", f"{result['start_rss_mb']:,.0f}", ""),
            ("after warm-up", f"{result['warm_rss_mb']:,.0f}", "")]
    rows += [(f"round {r['round']}: {r['predictions_so_far']:,} predictions, {r['round']} training(s)",
              f"{r['rss_after_training_mb']:,.0f}", f"{r['rss_after_training_mb'] - result['warm_rss_mb']:+,.0f}")
             for r in result["rounds"]]
    rows += [("end", f"{result['end_rss_mb']:,.0f}", f"{result['growth_mb']:+,.0f}"),
             ("peak", f"{result['peak_rss_mb']:,.0f}", "")]
    print(common.machine_line(info))
    print(common.markdown_table(["server process", "RSS (MB)", "vs warm-up"], rows))
    verdict = "within" if result["within_target"] else "OVER"
    print(f"\ngrowth after warm-up: {result['growth_mb']:+,.0f} MB ({verdict} the +{TARGET_MB} MB target); "
          f"predict p50 {result['predict_p50_s']} s; threads {result['threads_warm_end']}, open files "
          f"{result['open_files_warm_end']} (warm, end); disk {result['disk_mb']}\nresults: {out}")


if __name__ == "__main__":
    main()
