"""The GPU check's results: the key figures of each step's JSON, the targets, summary.json and the table printed
last (the device tool returns only the end of the output). Standard library only."""

from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE_WALL_TARGET_S = 60  # issue 14: the report's 50-epoch recipe in <= 60 s on one H100/H200
RECIPE_VS_PLAIN_TARGET = 5  # ... at >= 5x the plain loop's training images/s


def shown(path: Path, work: Path) -> str:
    """A path as results may show it: repository-relative, ../ for beside it, <work>/ for scratch."""
    text = str(Path(path).resolve())
    for root, label in ((work, "<work>"), (REPO, "."), (REPO.parent, "..")):
        if text == str(root) or text.startswith(str(root) + "/"):
            return label + text[len(str(root)):]
    return text


def scrub(path: Path, work: Path, out: Path) -> None:
    """No machine paths in a result JSON: the scratch folder (synthetic data) becomes <work>, the results folder <out>."""
    text = path.read_text()
    scrubbed = text.replace(str(work), "<work>").replace(str(out), "<out>")
    if scrubbed != text:
        path.write_text(scrubbed)


def _r(value, digits: int = 1):
    return None if value is None else round(value, digits)


def figures(step: str, payload: dict | None, junit: Path, log: str) -> dict:
    """The few numbers of a step that go into summary.json (the rest stays in its JSON)."""
    if step == "cuda-tests":
        return _junit(junit)
    if not payload:
        return {}
    if step == "latency":
        return {"p50_ms": {f"{r['image']} {r['case']}": r["p50_ms"] for r in payload["results"]},
                "gpu": payload["machine"].get("gpu")}
    out: dict = {"gpu": payload["machine"].get("gpu"), "model": payload["settings"]["model"],
                 "epochs": payload["settings"]["epochs"], "n_train": payload["settings"]["n_train"]}
    for name, r in payload["results"].items():
        if "error" in r:
            out[name] = {"error": r["error"]}
            continue
        rows = r.get("epochs") or []
        fit_end = rows[-1]["end"] if rows else None
        out[name] = {"train_img_s": r.get("train_img_s"), "epoch_s": _r(r.get("epoch_s"), 2), "setup_s": _r(r.get("setup_s")),
                     "wall_s": _r(r.get("wall_s")), "process_s": _r(r.get("process_s")),
                     "fit_s": _r(fit_end - rows[0]["start"]) if rows else None,
                     "finish_s": _r(r["wall_s"] - fit_end) if fit_end is not None else None,
                     "best_val_acc": r.get("best_val_acc"), "precision": r.get("precision"),
                     "img_s_vs_plain": (r.get("vs_plain") or {}).get("train_img_s_ratio"),
                     "peak_cuda_mib": (r.get("peak_memory") or {}).get("cuda_max_allocated_mib")}
    return out


def _junit(path: Path) -> dict:
    if not path.exists():
        return {}
    suites = ET.parse(path).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"], "collected": counts["tests"]}


def targets(outcomes: list[dict]) -> dict:
    """The issue's two targets for the recipe, from the recipe and speed-resnet steps (same model and data)."""
    steps = {o["step"]: o.get("figures") or {} for o in outcomes}
    recipe = steps.get("recipe", {}).get("full") or {}
    plain = steps.get("speed-resnet", {}).get("plain") or {}
    out = {}
    if recipe.get("wall_s") is not None:
        out["recipe_wall_s"] = {"value": recipe["wall_s"], "target": f"<= {RECIPE_WALL_TARGET_S}",
                                "met": recipe["wall_s"] <= RECIPE_WALL_TARGET_S}
    if recipe.get("train_img_s") and plain.get("train_img_s"):
        ratio = round(recipe["train_img_s"] / plain["train_img_s"], 2)
        out["recipe_img_s_vs_plain"] = {"value": ratio, "recipe_img_s": recipe["train_img_s"],
                                        "plain_img_s": plain["train_img_s"], "target": f">= {RECIPE_VS_PLAIN_TARGET}",
                                        "met": ratio >= RECIPE_VS_PLAIN_TARGET}
    return out


def summarize(outcomes: list[dict], args: argparse.Namespace, seconds: float) -> dict:
    probe = next((o.get("probe") for o in outcomes if o["step"] == "setup"), None) or {}
    data = next((o.get("data") for o in outcomes if o["step"] == "data"), None)
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dry_run": args.dry_run,
            "note": "dry run: tiny settings on the CPU; no figure here is a measurement" if args.dry_run else None,
            "command": "bash scripts/gpu-check.sh " + " ".join(_command_args(args)),
            "gpu": probe.get("gpu"), "torch": probe.get("torch"), "python": probe.get("python"),
            "data": data, "budget_s": args.budget, "seconds": round(seconds, 1),
            "ok": all(o["status"] == "ok" for o in outcomes), "steps": outcomes, "targets": targets(outcomes)}


def _command_args(args: argparse.Namespace) -> list[str]:
    out = ["--dry-run"] if args.dry_run else []
    if args.data:
        out += ["--data", str(args.data)]
    return out + ["--out", "<out>"]


def _line(o: dict) -> str:
    f = o.get("figures") or {}
    if o["status"] != "ok":
        return o.get("note", "")
    if o["step"] == "setup":
        p = o.get("probe", {})
        missing = f"; {o['note']}" if o.get("note") else ""
        return f"{p.get('gpu') or 'no GPU'}; torch {p.get('torch')}; python {p.get('python')}{missing}"
    if o["step"] == "data":
        return o.get("note", "")
    if o["step"] == "cuda-tests":
        return f"{f.get('passed')} passed, {f.get('failed')} failed, {f.get('skipped')} skipped"
    if o["step"] == "latency":
        return ", ".join(f"{k} {v:.1f}" for k, v in f.get("p50_ms", {}).items() if "max" not in k) + " (p50 ms)"
    parts = []
    for name in ("plain", "full", "fast"):
        r = f.get(name)
        if r and "error" not in r:
            ratio = f" ({r['img_s_vs_plain']}x plain)" if r.get("img_s_vs_plain") and name == "full" else ""
            parts.append(f"{name} {r['train_img_s']} img/s{ratio}, wall {r['wall_s']} s")
        elif r:
            parts.append(f"{name} failed: {' '.join(r['error'])[:80]}")
    return f"{f.get('model')} x{f.get('epochs')} ep: " + "; ".join(parts)


def table(summary: dict) -> str:
    rows = [f"{o['step']:<13} {o['status']:<8} {o['seconds']:>6.1f}  {str(o.get('device') or ''):<5} {_line(o)}"
            for o in summary["steps"]]
    lines = ["", "GPU check summary" + (" (DRY RUN: nothing measured)" if summary["dry_run"] else ""),
             f"{'step':<13} {'status':<8} {'s':>6}  {'dev':<5} figures", *rows]
    for name, t in summary["targets"].items():
        lines.append(f"target {name}: {t['value']} (target {t['target']}): {'met' if t['met'] else 'NOT met'}")
    lines.append(f"total {summary['seconds']:.1f} s of a {summary['budget_s']:.0f} s budget; all ok: {summary['ok']}")
    return "\n".join(lines)
