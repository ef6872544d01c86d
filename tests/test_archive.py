"""Tests for flowerdemo.archive: safe zip/tar extraction and its refusals."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import flowerdemo.data.archive as archive_mod
from flowerdemo.data.archive import ArchiveError, extract_tar, extract_zip, sizes
from flowerdemo.data.dataset import find_dataset_root, resolve_data, scan_dataset
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
    with pytest.raises(ArchiveError, match=r"many.zip has 5 entries; the limit is 3$"):
        extract_zip(zpath, tmp_path / "o1", max_files=3)
    with pytest.raises(ArchiveError, match=r"many.zip declares 9.8 KB of files; the limit is 4.9 KB uncompressed"):
        extract_zip(zpath, tmp_path / "o2", max_bytes=5000)
    with pytest.raises(ArchiveError, match=r"declares 9.77 KB of files; the limit is 9.76 KB"):
        extract_zip(zpath, tmp_path / "o2", max_bytes=9_999)  # one byte over: the numbers still differ
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert extract_zip(zpath, tmp_path / "o3", max_files=5, max_bytes=10_000) == tmp_path / "o3"


def test_sizes_read_differently_when_they_differ():
    gb = 1024**3
    assert sizes(2 * gb + 1, 2 * gb) == ["2,147,483,649 bytes", "2,147,483,648 bytes"]
    assert sizes(2300 * 1024**2, 2 * gb) == ["2.2 GB", "2.0 GB"]
    assert sizes(2 * gb + 20 * 1024**2, 2 * gb) == ["2.02 GB", "2.00 GB"]
    assert sizes(300 * 1024**2, 4 * gb) == ["300.0 MB", "4,096.0 MB"]
    assert sizes(512) == ["512 bytes"]


def test_refused_before_anything_is_written_and_named_as_the_visitor_named_it(tmp_path):
    """The declared sizes are checked from the directory: no destination, not even its parent, is
    created; the message calls the archive by the name given, not by the server's temp path."""
    zpath = _zip(tmp_path / "tmpa1b2c3.zip", {f"c/{i}.bin": b"\0" * 50_000 for i in range(3)})
    dest = tmp_path / "uploads" / "job" / "data"
    with pytest.raises(ArchiveError) as err:
        extract_zip(zpath, dest, max_bytes=100_000, name="my flowers.zip")
    assert str(err.value).startswith("my flowers.zip declares 146.5 KB of files; the limit is 97.7 KB")
    assert "tmpa1b2c3" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert not (tmp_path / "uploads").exists()


def test_default_limit_is_the_operator_setting_shared_by_app_and_cli(tmp_path, monkeypatch):
    zpath = _zip(tmp_path / "two-mb.zip", {"c/a.bin": b"\0" * (2 * 1024**2)})
    monkeypatch.setenv("FLOWERDEMO_MAX_EXTRACT_MB", "1")
    assert archive_mod.default_max_bytes() == 1024**2
    with pytest.raises(ArchiveError, match=r"declares 2.0 MB of files; the limit is 1.0 MB"):
        extract_zip(zpath, tmp_path / "out")
    with pytest.raises(ArchiveError, match=r"the limit is 1.0 MB"):  # the CLI's path to the same function
        resolve_data(zpath, str(tmp_path / "cli"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()
    monkeypatch.setenv("FLOWERDEMO_MAX_EXTRACT_MB", "3")
    assert (extract_zip(zpath, tmp_path / "out") / "c" / "a.bin").stat().st_size == 2 * 1024**2


def test_an_archive_bigger_than_the_free_disk_is_refused_up_front(tmp_path, monkeypatch):
    zpath = _zip(tmp_path / "big.zip", {"c/a.bin": b"\0" * 300_000})
    monkeypatch.setattr(archive_mod, "_free_bytes", lambda dest: 200_000)
    with pytest.raises(ArchiveError, match=r"big.zip needs 293.0 KB uncompressed, but this server has only 195.3 KB"):
        extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_errors_do_not_show_server_paths(tmp_path, monkeypatch):
    zpath = _zip(tmp_path / "ok.zip", {"c/a.bin": b"1"})
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "x" in mode:
            raise OSError(28, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(ArchiveError) as err:
        extract_zip(zpath, tmp_path / "secret-server-dir" / "out", name="visitor.zip")
    assert str(err.value) == "could not extract visitor.zip on this server: No space left on device"
    assert not list((tmp_path / "secret-server-dir").iterdir())  # the staging folder is gone


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
