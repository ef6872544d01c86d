"""The dataset check, measured: its wall time and findings on a folder, and (--compare) how the
near-duplicate methods were chosen.

    python benchmarks/dataset_check.py                 # `flowerdemo check` timing (cold and cached) + findings
    python benchmarks/dataset_check.py --compare       # pHash / dHash / reference embeddings: recall, false matches
    python benchmarks/dataset_check.py --ab            # fast-mode accuracy: plain split vs leakage-free split

--compare makes re-encoded (JPEG q=60), resized (50 %) and centre-cropped (90, 85, 80 %) copies of
--copies photos (every k-th file of the folder), and reports for each method and threshold the share of
copies matched with their original (recall) and the pairs of distinct files of the folder that match
(exact duplicates left out; the folder's own near-duplicates count here too, so this is an upper bound
on false matches: --sheet writes a contact sheet of them to look at). Methods: "phash" (64-bit pHash of
the whole photo), "phash_crops" (the product's: the fewest differing bits between any of the whole photo
and its 90 % and 80 % centre crops, both ways), "dhash", "embedding" (cosine similarity of the bundled
EfficientNet-Lite0's ImageNet features at 224 px, as the unknown-photo detector computes them).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from . import _common as common  # type: ignore[no-redef]
except ImportError:  # run as a script
    import _common as common  # type: ignore[no-redef]

from PIL import Image, ImageDraw  # noqa: E402

NAME = "dataset_check"
VARIANTS = ("jpeg60", "resize50", "crop90", "crop85", "crop80")
HASH_BITS = (4, 6, 8, 10, 12, 14)
COSINES = (0.97, 0.95, 0.93, 0.90)


def variant(data: bytes, kind: str) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if kind == "resize50":
        img = img.resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    elif kind.startswith("crop"):
        f = int(kind[4:]) / 100
        cw, ch = round(w * f), round(h * f)
        img = img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=60 if kind == "jpeg60" else 90)
    return out.getvalue()


def dhash(data: bytes) -> int:
    import imagehash

    img = Image.open(io.BytesIO(data))
    img.draft("L", (64, 64))
    return int(str(imagehash.dhash(img.convert("L"))), 16)


def embeddings(blobs: list[bytes], batch: int = 64) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from flowerdemo.models.unknown import REFERENCE_SIZE, reference_features

    out = []
    for i in range(0, len(blobs), batch):
        imgs = [Image.open(io.BytesIO(b)).convert("RGB").resize((REFERENCE_SIZE, REFERENCE_SIZE), Image.Resampling.BILINEAR)
                for b in blobs[i:i + batch]]
        x = torch.from_numpy(np.stack([np.asarray(m) for m in imgs])).permute(0, 3, 1, 2).float() / 255
        out.append(F.normalize(reference_features(x, (0.0,) * 3, (1.0,) * 3), dim=1).numpy())
    return np.concatenate(out)


def crop_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise: the fewest differing bits over every pair of hashes (columns) of a and b, as similar.near_pairs."""
    return np.min([np.bitwise_count(a[:, i] ^ b[:, j]) for i in range(a.shape[1]) for j in range(b.shape[1])], axis=0)


def compare(paths: list[Path], labels: list[str], n_copies: int, sheet: Path | None) -> dict:
    from flowerdemo.data.similar import exact_pairs, fingerprint_bytes

    blobs = [p.read_bytes() for p in paths]
    step = max(1, len(paths) // n_copies)
    picked = list(range(0, len(paths), step))[:n_copies]
    t0 = time.perf_counter()
    fps = [fingerprint_bytes(b) for b in blobs]
    t_phash = time.perf_counter() - t0
    t0 = time.perf_counter()
    dh = np.array([dhash(b) for b in blobs], dtype=np.uint64)
    t_dhash = time.perf_counter() - t0
    ph = np.array([f.phashes for f in fps], dtype=np.uint64)  # (N, crops): column 0 is the whole photo
    t0 = time.perf_counter()
    emb = embeddings(blobs)
    t_emb = time.perf_counter() - t0
    copies = {k: [variant(blobs[i], k) for i in picked] for k in VARIANTS}
    same = {frozenset(p) for p in exact_pairs([f.sha for f in fps])}
    iu = np.triu_indices(len(paths), 1)
    distinct = np.array([frozenset((a, b)) not in same for a, b in zip(*iu, strict=True)])
    cross = np.array([labels[a] != labels[b] for a, b in zip(*iu, strict=True)])
    rows = []
    for method in ("phash", "phash_crops", "dhash", "embedding"):
        if method == "embedding":
            sims = (emb @ emb.T)[iu]
            copy_scores = {k: np.sum(embeddings(v) * emb[picked], axis=1) for k, v in copies.items()}
            thresholds, hit = COSINES, (lambda s, t: s >= t)
        else:
            base = {"phash": ph[:, :1], "phash_crops": ph, "dhash": dh[:, None]}[method]
            sims = crop_bits(base[iu[0]], base[iu[1]])
            f = dhash if method == "dhash" else (lambda b: fingerprint_bytes(b).phashes)
            copy_scores = {k: crop_bits(np.array([f(b) for b in v], dtype=np.uint64).reshape(len(v), -1)[:, :base.shape[1]],
                                        base[picked]) for k, v in copies.items()}
            thresholds, hit = HASH_BITS, (lambda s, t: s <= t)
        for t in thresholds:
            matched = hit(sims, t) & distinct
            rows.append({"method": method, "threshold": t,
                         **{f"recall_{k}": round(float(np.mean(hit(s, t))), 3) for k, s in copy_scores.items()},
                         "pairs_matched": int(matched.sum()), "cross_class_pairs": int((matched & cross).sum()),
                         "false_match_rate_upper": float(matched.sum() / distinct.sum())})
    if sheet is not None:
        write_sheet(paths, [(a, b) for a, b, m in zip(*iu, crop_bits(ph[iu[0]], ph[iu[1]]) <= 8, strict=True)
                            if m and frozenset((a, b)) not in same], sheet)
    return {"files": len(paths), "copies_of": len(picked), "variants": list(VARIANTS),
            "seconds_per_1000": {"phash": round(t_phash / len(paths) * 1000, 2), "dhash": round(t_dhash / len(paths) * 1000, 2),
                                 "embedding": round(t_emb / len(paths) * 1000, 2)}, "rows": rows}


def write_sheet(paths: list[Path], pairs: list[tuple[int, int]], out: Path, side: int = 128) -> None:
    """A contact sheet: one row per matched pair, the two photos side by side with their folders."""
    sheet = Image.new("RGB", (2 * side + 10, max(1, len(pairs)) * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (a, b) in enumerate(pairs):
        for c, i in enumerate((a, b)):
            sheet.paste(Image.open(paths[i]).convert("RGB").resize((side, side)), (c * (side + 10), r * (side + 14) + 12))
            draw.text((c * (side + 10), r * (side + 14)), f"{paths[i].parent.name}/{paths[i].name}"[:22], fill="black")
    sheet.save(out)


def timing(data: Path) -> dict:
    from flowerdemo.data.check import check_dataset

    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ["FLOWERDEMO_CACHE"] = cache
        t0 = time.perf_counter()
        cold = check_dataset(data)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_dataset(data)
        t_warm = time.perf_counter() - t0
    d = cold.to_dict()
    return {"seconds_cold": round(t_cold, 2), "seconds_cached": round(t_warm, 2), "counts": d["counts"],
            "groups": len(cold.groups), "groups_kept_together": cold.groups_kept_together,
            "findings": [{k: f[k] for k in ("kind", "severity", "message")} for f in d["findings"]]}


def ab(data: Path, out_dir: Path, seed: int) -> dict:
    """Train fast mode twice with the same seed: on the plain split, then on the leakage-free one."""
    from flowerdemo.config import TrainConfig
    from flowerdemo.data.dataset import list_dataset, scan_dataset
    from flowerdemo.data.similar import fingerprints, similar_groups
    from flowerdemo.train.engine import train
    from flowerdemo.train.events import Finished

    cfg = TrainConfig(mode="fast", seed=seed)
    paths = [p for files in list_dataset(data).files for p in files]
    groups = [[paths[i] for i in g] for g in similar_groups(fingerprints(paths))]
    runs = {}
    for name, keep in (("plain", False), ("leakage_free", True)):
        split = scan_dataset(data, val_fraction=cfg.val_fraction, seed=seed, keep_groups=keep)
        val = {s.path for s in split.val}
        leaked = sum(1 for g in groups for p in g if p in val and any(q not in val for q in g))
        fin = [ev for ev in train(cfg, split, out_dir=out_dir) if isinstance(ev, Finished)][-1]
        r = fin.report
        runs[name] = {"accuracy": r["accuracy"], "correct": r["correct"], "total": r["total"],
                      "wilson95": r["accuracy_interval"], "best_epoch": fin.best_epoch,
                      "val_photos_with_a_copy_in_training": leaked, "groups_kept_together": split.groups_kept_together,
                      "seconds": round(fin.seconds, 1)}
        print(name, runs[name], flush=True)
    return {"config": {"mode": "fast", "seed": seed, "val_fraction": cfg.val_fraction, "epochs": cfg.epochs},
            "groups": len(groups), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(p, NAME)
    p.add_argument("--compare", action="store_true", help="compare the near-duplicate methods (slow: embeds every photo)")
    p.add_argument("--ab", action="store_true", help="fast-mode training on the plain vs the leakage-free split")
    p.add_argument("--seed", type=int, default=0, help="--ab: the split's and the training's seed [0]")
    p.add_argument("--copies", type=int, default=100, help="photos copied for --compare [100]")
    p.add_argument("--sheet", type=Path, default=None, help="--compare: a contact sheet of the pairs within 8 bits")
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    data = common.require_data(args.data)
    result: dict = {"command": " ".join(["python", "benchmarks/dataset_check.py", *(argv or sys.argv[1:])]),
                    "data": data.name, "machine": common.machine_info()}
    if args.ab:
        with tempfile.TemporaryDirectory() as runs:
            result["ab"] = ab(data, Path(runs), args.seed)
    elif args.compare:
        from flowerdemo.data.dataset import scan_dataset

        split = scan_dataset(data)  # only the file list is used
        samples = sorted(split.train + split.val, key=lambda s: s.path.as_posix())
        result["compare"] = compare([s.path for s in samples], [split.classes[s.label] for s in samples], args.copies, args.sheet)
        for r in result["compare"]["rows"]:
            print(" | ".join(str(v) for v in r.values()))
        print(result["compare"]["seconds_per_1000"])
    else:
        result["timing"] = timing(data)
        print(json.dumps(result["timing"], indent=1))
    out = args.out or common.default_out(NAME)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
