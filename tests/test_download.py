"""Tests for flowerdemo.download against a loopback-only HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading

import pytest

from flowerdemo.data.dataset import scan_dataset
from flowerdemo.data.download import FLOWERS_SHA256, FLOWERS_URL, DownloadError, download_flowers
from tests.synth import make_dataset


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tgz(tmp_path_factory) -> bytes:
    """A miniature flower_photos.tgz: flower_photos/{LICENSE.txt, <3 class folders>}."""
    src = make_dataset(tmp_path_factory.mktemp("src") / "flower_photos", per_class=4, size=16)
    (src / "LICENSE.txt").write_text("CC-BY 2.0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src, arcname="flower_photos")
    return buf.getvalue()


@pytest.fixture
def server(tgz):
    """Serve `tgz` at /flower_photos.tgz on 127.0.0.1; yields (base_url, list_of_request_paths)."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            if self.path != "/flower_photos.tgz":
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(tgz)))
            self.end_headers()
            self.wfile.write(tgz)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_constants_are_the_published_ones():
    assert FLOWERS_URL.endswith("/example_images/flower_photos.tgz")
    assert FLOWERS_SHA256 == "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"


def test_download_verify_extract_then_cached(tmp_path, server, tgz):
    base, requests = server
    seen: list[tuple[int, int | None]] = []
    root = download_flowers(
        tmp_path / "cache",
        url=f"{base}/flower_photos.tgz",
        sha256=hashlib.sha256(tgz).hexdigest(),
        timeout=5,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert root == tmp_path / "cache" / "flower_photos" / "flower_photos"
    assert (tmp_path / "cache" / "flower_photos.tgz").read_bytes() == tgz
    assert seen and seen[-1] == (len(tgz), len(tgz))
    ds = scan_dataset(root)
    assert ds.classes == ("circle", "square", "triangle") and [p.name for p, _ in ds.skipped] == ["LICENSE.txt"]
    assert requests == ["/flower_photos.tgz"]
    again = download_flowers(tmp_path / "cache", url=f"{base}/flower_photos.tgz", sha256="0" * 64, timeout=5)
    assert again == root and requests == ["/flower_photos.tgz"]  # no second request
    assert not list((tmp_path / "cache").glob("*.part")) and not list((tmp_path / "cache").glob(".*"))


def test_existing_archive_reverified_without_network(tmp_path, tgz):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "flower_photos.tgz").write_bytes(tgz)
    root = download_flowers(cache, url="http://127.0.0.1:9/flower_photos.tgz",
                            sha256=hashlib.sha256(tgz).hexdigest(), timeout=2)
    assert (root / "circle").is_dir()


def test_checksum_mismatch_deletes_file(tmp_path, server):
    base, requests = server
    with pytest.raises(DownloadError, match=r"Checksum mismatch.*expected sha256 a{64}.*deleted"):
        download_flowers(tmp_path / "cache", url=f"{base}/flower_photos.tgz", sha256="a" * 64, timeout=5)
    assert requests == ["/flower_photos.tgz"]
    assert list((tmp_path / "cache").iterdir()) == []  # neither the archive nor a temp file is left


def test_http_error(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match=r"failed: HTTP error 404.*--data"):
        download_flowers(tmp_path / "cache", url=f"{base}/missing.tgz", sha256=None, timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_says_what_to_do(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/flower_photos.tgz"
    with pytest.raises(DownloadError) as info:
        download_flowers(tmp_path / "cache", url=url, timeout=2)
    msg = str(info.value)
    assert "failed" in msg and "cannot reach the server" in msg
    assert f"download flower_photos.tgz from {url} on a machine with a network" in msg
    assert "--data" in msg and "upload a .zip of class folders" in msg
    assert not (tmp_path / "cache" / "flower_photos").exists()


def test_rejects_non_http_url(tmp_path):
    with pytest.raises(DownloadError, match="http:// or https://"):
        download_flowers(tmp_path / "cache", url="file:///etc/passwd")


def test_size_limit(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match="limit"):
        download_flowers(tmp_path / "cache", url=f"{base}/flower_photos.tgz", sha256=None, max_bytes=100, timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []
