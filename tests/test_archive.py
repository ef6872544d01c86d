"""Tests for flowerdemo.archive: safe zip/tar extraction and its refusals."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import flowerdemo.data.archive as archive_mod
from flowerdemo.data.archive import ArchiveError, extract_tar, extract_zip
from flowerdemo.data.dataset import find_dataset_root, scan_dataset
from tests.synth import make_dataset


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_good_zip_extracts_dataset(tmp_path):
    data = make_dataset(tmp_path / "src" / "flower_photos", per_class=3, size=16)
    zpath = tmp_path / "upload.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(data.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path / "src").as_posix())
        zf.writestr("__MACOSX/flower_photos/._junk", b"apple double")
    dest = tmp_path / "out"
    assert extract_zip(zpath, dest) == dest
    assert "__MACOSX" not in _tree(dest)
    root = find_dataset_root(dest)
    assert root == dest / "flower_photos"
    assert (root / "circle" / "circle_000.png").read_bytes() == (data / "circle" / "circle_000.png").read_bytes()
    assert scan_dataset(dest).counts()["train"] == {"circle": 2, "square": 2, "triangle": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src", "upload.zip"]  # no staging left


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../evil.txt", r"outside the extraction folder"),
        ("ok/../../evil.txt", r"outside the extraction folder"),
        ("..\\evil.txt", r"outside the extraction folder"),
        ("/tmp/evil.txt", r"absolute path"),
        ("C:/evil.txt", r"absolute path"),
        ("C:\\evil.txt", r"absolute path"),
    ],
)
def test_zip_path_escapes_rejected(tmp_path, name, match):
    zpath = _zip(tmp_path / "bad.zip", {"fine/a.txt": b"a", name: b"evil"})
    dest = tmp_path / "sub" / "out"
    with pytest.raises(ArchiveError, match=match):
        extract_zip(zpath, dest)
    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.zip"]  # nothing written at all


def test_zip_symlink_rejected(tmp_path):
    zpath = _zip(tmp_path / "link.zip", {"a/ok.txt": b"ok"}, symlinks={"a/passwd": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_limits(tmp_path):
    zpath = _zip(tmp_path / "many.zip", {f"c/{i}.txt": b"x" * 2000 for i in range(5)})
    with pytest.raises(ArchiveError, match=r"5 entries; the limit is 3 files"):
        extract_zip(zpath, tmp_path / "o1", max_files=3)
    with pytest.raises(ArchiveError, match=r"expand to 10,000 bytes; the limit is 5,000 bytes"):
        extract_zip(zpath, tmp_path / "o2", max_bytes=5000)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert extract_zip(zpath, tmp_path / "o3", max_files=5, max_bytes=10_000) == tmp_path / "o3"


def test_lying_headers_stopped_while_streaming(tmp_path, monkeypatch):
    """If declared sizes lie (simulated by skipping the header check), real bytes are still counted."""
    zpath = _zip(tmp_path / "bomb.zip", {f"c/{i}.bin": b"\0" * 4096 for i in range(4)})
    monkeypatch.setattr(archive_mod, "_check_totals", lambda *a, **k: None)
    with pytest.raises(ArchiveError, match="more than its headers declare"):
        extract_zip(zpath, tmp_path / "out", max_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]  # partial output cleaned up


def test_not_a_zip_and_corrupt(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"definitely not a zip file")
    with pytest.raises(ArchiveError, match="not a readable .zip"):
        extract_zip(junk, tmp_path / "o")
    good = _zip(tmp_path / "good.zip", {"a/b.txt": b"hello " * 1000})
    raw = bytearray(good.read_bytes())
    raw[40:60] = b"\xff" * 20  # damage the compressed data, keep the directory intact
    (tmp_path / "corrupt.zip").write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        extract_zip(tmp_path / "corrupt.zip", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_dest_must_be_new_or_empty(tmp_path):
    zpath = _zip(tmp_path / "a.zip", {"x/y.txt": b"1"})
    (tmp_path / "empty").mkdir()
    assert (extract_zip(zpath, tmp_path / "empty") / "x" / "y.txt").read_bytes() == b"1"
    with pytest.raises(ArchiveError, match="not an empty folder"):
        extract_zip(zpath, tmp_path / "empty")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def test_good_tar(tmp_path):
    tpath = _tar(tmp_path / "d.tgz", [(_info("flower_photos", tarfile.DIRTYPE), None),
                                       (_info("flower_photos/LICENSE.txt"), b"cc-by"),
                                       (_info("flower_photos/daisy/1.jpg"), b"jpegdata")])
    dest = extract_tar(tpath, tmp_path / "out")
    assert _tree(dest) == {"flower_photos", "flower_photos/LICENSE.txt", "flower_photos/daisy",
                           "flower_photos/daisy/1.jpg"}
    assert (dest / "flower_photos/daisy/1.jpg").read_bytes() == b"jpegdata"


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_info("a/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_info("a/hard", tarfile.LNKTYPE, "a/ok.txt"), "is a link"),
        (_info("a/dev", tarfile.CHRTYPE), "special file"),
        (_info("a/fifo", tarfile.FIFOTYPE), "special file"),
        (_info("../evil.txt"), "outside the extraction folder"),
        (_info("/abs/evil.txt"), "absolute path"),
    ],
)
def test_bad_tar_members(tmp_path, member, match):
    data = b"evil" if member.type == tarfile.REGTYPE else None
    tpath = _tar(tmp_path / "bad.tgz", [(_info("a/ok.txt"), b"ok"), (member, data)])
    with pytest.raises(ArchiveError, match=match):
        extract_tar(tpath, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.tgz"]


def test_tar_limits_and_junk(tmp_path):
    tpath = _tar(tmp_path / "m.tgz", [(_info(f"c/{i}.txt"), b"y" * 100) for i in range(6)])
    with pytest.raises(ArchiveError, match="more than 4 entries"):
        extract_tar(tpath, tmp_path / "o", max_files=4)
    with pytest.raises(ArchiveError, match="the limit is 500 bytes"):
        extract_tar(tpath, tmp_path / "o", max_bytes=500)
    (tmp_path / "junk.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArchiveError, match="not a readable .tar"):
        extract_tar(tmp_path / "junk.tgz", tmp_path / "o")
    assert not (tmp_path / "o").exists()
