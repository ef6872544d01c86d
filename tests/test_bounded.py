"""Bounded resources through the public entry points (issue 12): an archive over the limit is refused
from its directory with nothing written, in the app exactly as in the CLI, and a request refused as
busy (or failing after it extracted an upload) leaves nothing behind."""

from __future__ import annotations

import logging
import struct
import threading
import time
import zipfile
from pathlib import Path

import pytest

import flowerdemo.data.archive as archive_mod
from tests.synth import make_dataset

pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.test_app import make_zip, max_epoch, new_client, running_app, train_args  # noqa: E402

DECLARED = 2_400_000_000  # per entry: two entries declare 4.47 GiB, over the app's default 4,096 MB


def forged_zip(path: Path, declared: int = DECLARED, entries: int = 2) -> Path:
    """A few hundred bytes whose central directory declares `entries` files of `declared` bytes each
    (what a zip bomb's directory says), without anyone having to compress gigabytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"circle/{i}.png", b"tiny")
    raw = bytearray(path.read_bytes())
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:  # each central directory record
        raw[at + 24:at + 28] = struct.pack("<I", declared)  # its uncompressed size
        at += 4
    path.write_bytes(bytes(raw))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) == declared * entries
    return path


class Watch:
    """Polls a folder while a request runs: the most entries it ever held (nothing written = 0)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.most, self._done = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                self.most = max(self.most, sum(1 for _ in self.folder.rglob("*")))
            except OSError:  # a folder removed while being listed
                pass
            time.sleep(0.005)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@pytest.fixture(scope="module")
def app_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    with running_app(root, None) as (demo, url):
        yield demo, url, root


def uploads(root: Path) -> list[Path]:
    folder = root / "work" / "uploads"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_an_archive_declaring_more_than_the_limit_is_refused_by_the_app_with_nothing_written(app_root, tmp_path):
    demo, url, root = app_root
    client = new_client(url, tmp_path / "downloads")
    upload = forged_zip(tmp_path / "My flowers (2024).zip")
    for api in ("/scan_dataset", "/train"):
        args = ("zip", handle_file(str(upload)), "") if api == "/scan_dataset" else train_args("zip", handle_file(str(upload)))
        with Watch(root / "work" / "uploads") as watch, pytest.raises(AppError) as err:
            client.predict(*args, api_name=api)
        message = str(err.value)
        # the visitor's own file name, the numbers stated so they differ, no server path
        assert "My flowers (2024).zip declares 4.5 GB of files; the limit is 4.0 GB uncompressed" in message, message
        assert "/tmp" not in message and str(root) not in message and "gradio" not in message, message
        assert watch.most == 0 and uploads(root) == []


def test_the_cli_refuses_the_same_archive_with_the_same_check(tmp_path, monkeypatch, caplog):
    from flowerdemo.cli.main import main

    def must_not_write(*args, **kwargs):
        raise AssertionError("the archive was being extracted")

    monkeypatch.setattr(archive_mod, "_write_all", must_not_write)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    upload = forged_zip(tmp_path / "bomb.zip")
    with caplog.at_level(logging.ERROR, logger="flowerdemo"):
        code = main(["train", "--data", str(upload), "--out", str(tmp_path / "ck"), "--mode", "fast"])
    assert code == 2
    assert "bomb.zip declares 4.5 GB of files; the limit is 4.0 GB uncompressed" in caplog.text
    assert not (tmp_path / "ck").exists() and list((tmp_path / "tmp").iterdir()) == []


def _dataset_zip(tmp_path: Path, name: str, per_class: int = 12) -> Path:
    data = make_dataset(tmp_path / name, per_class=per_class, size=48, classes=("circle", "square"), seed=6)
    return make_zip(tmp_path / f"{name}.zip", {str(f.relative_to(tmp_path)): f.read_bytes()
                                               for f in sorted(data.rglob("*.png"))})


def test_two_simultaneous_trainings_leave_exactly_one_upload_folder(app_root, tmp_path):
    demo, url, root = app_root
    a, b = new_client(url, tmp_path / "da"), new_client(url, tmp_path / "db")
    zips = [_dataset_zip(tmp_path, "one"), _dataset_zip(tmp_path, "two")]
    # full mode on a CPU: slow enough per epoch that the winner is still training when we look
    jobs = [who.submit(*train_args("zip", handle_file(str(z)), mode="full", epochs=100, batch_size=4),
                       api_name="/train") for who, z in zip((a, b), zips, strict=True)]

    def settled(job) -> bool:
        return job.done() or any(max_epoch(out[2]) >= 1 for out in job.outputs())

    try:
        deadline = time.monotonic() + 240
        while not all(settled(j) for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = [j for j in jobs if j.done()]
        assert len(refused) == 1, "exactly one of the two requests is refused as busy"
        with pytest.raises(AppError, match="busy"):
            refused[0].result()
        assert len(uploads(root)) == 1  # the winner's extraction, in use; nothing from the other
    finally:  # whatever happened, end the run so that later tests find the slot free
        for who in (a, b):
            try:
                who.predict(api_name="/stop")
            except AppError:  # not this visitor's run
                pass
        for job in jobs:
            try:
                job.result()
            except AppError:
                pass
    assert uploads(root) == []  # and the winner's goes when its run ends


def test_a_request_failing_after_its_upload_was_extracted_removes_it(app_root, tmp_path, monkeypatch):
    demo, url, root = app_root
    client = new_client(url, tmp_path / "downloads")

    extracted = []

    def cannot_start(cfg, data, out_dir, stop):
        extracted.append(uploads(root))  # what was on disk when the start failed (polling can miss it)
        raise OSError("the GPU quota is used up")

    monkeypatch.setattr(demo.ctx.job, "_train_fn", cannot_start)
    with pytest.raises(AppError, match="quota"):
        client.predict(*train_args("zip", handle_file(str(_dataset_zip(tmp_path, "three", per_class=3)))),
                       api_name="/train")
    assert extracted and extracted[0], "the upload was extracted before the start failed"
    assert uploads(root) == [] and not demo.ctx.job.state.running
