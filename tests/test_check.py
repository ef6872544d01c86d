"""The dataset check (flowerdemo.data.check), the fingerprint cache, the leakage-free split and
`flowerdemo check`: planted problems are each reported, a clean folder gets no finding, and no
near-duplicate group ever straddles the split."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.cli import check as cli_check
from flowerdemo.data import similar
from flowerdemo.data.check import KINDS, check_dataset
from flowerdemo.data.dataset import scan_dataset
from flowerdemo.data.split import keep_together

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "flowers5-dev"


def photo(seed: int, size: tuple[int, int] = (160, 160)) -> Image.Image:
    """A distinct photo-like image: a random low-frequency colour field plus grain."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(field, dtype=int) + grain, 0, 255).astype(np.uint8))


def clean_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            photo(seed).save(root / c / f"{c}_{i:03d}.jpg", quality=90)
    return root


def copy_resized(src: Path, dst: Path) -> None:
    img = Image.open(src)
    img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(dst, quality=60)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """40 'big' photos (3 of them planted) and 4 'small' ones (10:1), one of each kind of problem."""
    root = clean_folder(tmp_path_factory.mktemp("planted"), {"big": 37, "small": 4})
    (root / "small" / "small_000.jpg").write_bytes((root / "big" / "big_000.jpg").read_bytes())  # filed twice
    copy_resized(root / "big" / "big_001.jpg", root / "big" / "big_001_copy.jpg")  # resized + re-encoded
    photo(999, (40, 40)).save(root / "big" / "thumb.png")
    photo(998, (400, 100)).save(root / "big" / "banner.png")
    (root / "big" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def by_kind(result) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in result.findings:
        out.setdefault(f.kind, []).append(f)
    return out


def names(paths) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in paths}


def test_clean_folder_has_no_findings(tmp_path):
    result = check_dataset(clean_folder(tmp_path / "d", {"a": 30, "b": 30, "c": 30}))
    assert result.findings == () and result.groups == ()
    assert result.counts == {"a": 30, "b": 30, "c": 30} and result.classes == ("a", "b", "c")
    assert "No problems found" in result.summary()


def test_planted_problems_are_each_reported(planted):
    result = check_dataset(planted)
    kinds = by_kind(result)
    assert set(kinds) == {"conflicting_labels", "near_duplicate", "tiny", "extreme_aspect", "unreadable", "imbalance",
                          "too_few"}
    assert set(kinds) <= set(KINDS)
    [conflict] = kinds["conflicting_labels"]
    assert names(conflict.paths) == {"big/big_000.jpg", "small/small_000.jpg"} and conflict.severity == "error"
    assert conflict.classes == ("big", "small") and "big" in conflict.message and "small" in conflict.message
    [near] = kinds["near_duplicate"]
    assert names(near.paths) == {"big/big_001.jpg", "big/big_001_copy.jpg"}
    assert names(kinds["tiny"][0].paths) == {"big/thumb.png"} and "40x40" in kinds["tiny"][0].message
    assert names(kinds["extreme_aspect"][0].paths) == {"big/banner.png"}
    assert names(kinds["unreadable"][0].paths) == {"big/broken.jpg"}
    [imbalance] = kinds["imbalance"]
    assert imbalance.classes == ("big", "small") and "10:1" in imbalance.message
    assert [f.classes for f in kinds["too_few"]] == [("small",)]
    assert result.errors == 1 and result.findings[0].kind == "conflicting_labels"  # most serious first
    assert len(result.groups) == 2
    d = result.to_dict()
    json.dumps(d)
    assert {"big/big_000.jpg", "small/small_000.jpg"} in [set(g) for g in d["groups"]]


def test_exact_only_skips_near_duplicates(planted):
    kinds = by_kind(check_dataset(planted, near=False))
    assert "conflicting_labels" in kinds and "near_duplicate" not in kinds


def test_split_keeps_every_group_on_one_side(tmp_path):
    root = clean_folder(tmp_path / "d", {"a": 30, "b": 30, "c": 30})
    for i in range(6):  # copies within a class and across classes
        copy_resized(root / "a" / f"a_{i:03d}.jpg", root / "a" / f"a_{i:03d}_copy.jpg")
        (root / "b" / f"from_c_{i}.jpg").write_bytes((root / "c" / f"c_{i:03d}.jpg").read_bytes())
    groups = check_dataset(root).groups
    assert len(groups) == 12
    cut_plain = kept = 0
    for seed in range(6):
        for fraction in (0.2, 0.5):
            plain = scan_dataset(root, seed=seed, val_fraction=fraction, keep_groups=False)
            split = scan_dataset(root, seed=seed, val_fraction=fraction)
            val, val_plain = {s.path for s in split.val}, {s.path for s in plain.val}
            for g in groups:
                assert len({p in val for p in g}) == 1, (seed, fraction, g)
            cut = sum(len({p in val_plain for p in g}) == 2 for g in groups)
            assert split.groups_kept_together == cut and split.groups_left_split == 0 and split.near_duplicate_groups == 12
            cut_plain += cut
            kept += split.groups_kept_together
            assert {s.path for s in split.train + split.val} == {s.path for s in plain.train + plain.val}
            for c, n in plain.counts()["val"].items():  # the validation share per class is (nearly) kept
                assert abs(split.counts()["val"][c] - n) <= 1
    assert cut_plain > 0 and kept == cut_plain  # the plain split does cut groups: the test has teeth
    assert "kept on one side" in split.summary() or split.groups_kept_together == 0


def test_split_without_groups_is_the_plain_split(tmp_path):
    root = clean_folder(tmp_path / "d", {"a": 12, "b": 9})
    assert scan_dataset(root, seed=3) == scan_dataset(root, seed=3, keep_groups=False)


def test_keep_together_moves_cut_groups_and_refills_the_class():
    a = [Path(f"a{i}") for i in range(10)]
    b = [Path(f"b{i}") for i in range(10)]
    out = keep_together([a, b], [2, 2], [[a[0], a[5], a[6]], [a[1], b[9]]])
    assert a[0] not in out.val[0] and not {a[5], a[6]} & out.val[0]  # majority in training: all train
    assert {a[1] in out.val[0], b[9] in out.val[1]} in ({True}, {False})  # across classes: one side
    assert len(out.val[0]) == 2 and len(out.val[1]) == 2
    assert (out.groups, out.kept_together, out.left_split) == (2, 2, 0)
    one = keep_together([a[:3]], [1], [a[:3]])  # a class that is one group cannot be split without cutting it
    assert len(one.val[0]) == 1 and one.left_split == 1


def test_presplit_groups_across_folders_are_reported(tmp_path):
    root = tmp_path / "d"
    clean_folder(root / "train", {"a": 8, "b": 8})
    clean_folder(root / "val", {"a": 3, "b": 3}, seed=100)
    (root / "val" / "a" / "leak.jpg").write_bytes((root / "train" / "a" / "a_002.jpg").read_bytes())
    result = check_dataset(root)
    assert result.presplit and result.groups_left_split == 1 and result.counts == {"a": 12, "b": 11}
    [dup] = [f for f in result.findings if f.kind == "exact_duplicate"]
    assert "validation folder" in dup.message and dup.severity == "warning"
    split = scan_dataset(root)
    assert split.groups_left_split == 1 and "both sides" in split.summary()


def test_fingerprints_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    root = clean_folder(tmp_path / "d", {"a": 4})
    files = sorted((root / "a").iterdir())
    first = similar.fingerprints(files, cache_dir=tmp_path / "cache")
    calls: list[int] = []
    real = similar.fingerprint_bytes
    monkeypatch.setattr(similar, "fingerprint_bytes", lambda data: calls.append(1) or real(data))
    assert similar.fingerprints(files, cache_dir=tmp_path / "cache") == first and calls == []
    photo(77).save(files[0], quality=90)  # changed content: size/mtime change, recomputed
    again = similar.fingerprints(files, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and again[0] != first[0] and again[1:] == first[1:]


def test_fingerprint_cache_remembers_a_bounded_number_of_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(similar, "CACHE_FILES", 2)
    cache = tmp_path / "cache"
    for i in range(3):  # e.g. three uploads, each extracted to a new folder
        root = clean_folder(tmp_path / f"upload{i}", {"a": 1}, seed=10 * i)
        similar.fingerprints(sorted((root / "a").iterdir()), cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 2
    assert similar._cache_file(cache, sorted((root / "a").iterdir())).exists()  # the newest is kept


def test_fingerprint_survives_bad_data_and_matches_imagehash():
    import imagehash

    assert similar.fingerprint_bytes(b"garbage").error and similar.fingerprint_bytes(b"").error
    img = photo(5)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    fp = similar.fingerprint_bytes(buf.getvalue())
    assert (fp.width, fp.height, fp.error) == (160, 160, "")
    assert fp.phashes[0] == int(str(imagehash.phash(img)), 16) and len(fp.phashes) == len(similar.CROPS)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_check.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["check", *argv])


def test_cli_exit_status_and_json(planted, tmp_path, capsys):
    assert cli_check.run(_cli(["--data", str(planted), "--json"])) == 1  # conflicting labels are an error
    d = json.loads(capsys.readouterr().out)
    assert d["counts"] == {"big": 40, "small": 4}  # broken.jpg is skipped (unreadable header)
    assert all(not p.startswith("/") for f in d["findings"] for p in f["paths"])
    assert cli_check.run(_cli(["--data", str(clean_folder(tmp_path / "c", {"a": 25, "b": 25}))])) == 0
    assert "No problems found" in capsys.readouterr().out


@pytest.mark.skipif(not DEV.is_dir(), reason="flowers5-dev not present")
def test_flowers5_dev_rose_tulip_photo_is_found():
    result = check_dataset(DEV)
    conflicts = [f for f in result.findings if f.kind == "conflicting_labels"]
    assert any(set(f.classes) == {"rose", "tulip"} for f in conflicts)
    assert result.seconds < 60
