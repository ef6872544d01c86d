"""Serving many visitors at once: concurrent forwards are batched (infer/batching.py) and give each caller
what it would get alone; concurrent /predict requests through the app answer as serial ones; the heatmap
images sent are compact JPEGs at most the display size; forwards share the cores (device.ComputeShare)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from flowerdemo.device import ComputeShare, intra_op_threads
from flowerdemo.infer import runtime
from flowerdemo.infer.batching import MicroBatcher
from flowerdemo.infer.predict import warm_up
from flowerdemo.models.checkpoints import load_checkpoint
from tests.test_app import answer, new_client, photo, running_app, tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


def call_together(batcher: MicroBatcher, fn, inputs: list[torch.Tensor]) -> list:
    """Each input from its own thread, all queued before the first batch runs (its leader waits for them)."""
    results: list = [None] * len(inputs)
    errors: list = [None] * len(inputs)
    entered = threading.Semaphore(0)

    def held(x: torch.Tensor):
        if batcher.batches == 0:  # the first leader waits until every thread has called (and so queued)
            for _ in inputs:
                assert entered.acquire(timeout=10)
            time.sleep(0.1)
        return fn(x)

    def go(i: int) -> None:
        try:
            entered.release()
            results[i] = batcher(held, inputs[i])
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return [e if e is not None else r for r, e in zip(results, errors, strict=True)]


def test_batched_forwards_give_each_caller_its_own_single_forward(tiny):
    clf = load_checkpoint(tiny)
    size = clf.preprocessing.input_size
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, 3, size, size, generator=gen) for n in (1, 1, 3, 1, 2)]  # check batches have 5 rows
    batcher = MicroBatcher()

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return clf.model(x.contiguous(memory_format=torch.channels_last))

    got = call_together(batcher, forward, inputs)
    assert batcher.batches < len(inputs)  # some requests really were stacked into one forward
    assert batcher.rows == sum(len(x) for x in inputs)
    for x, y in zip(inputs, got, strict=True):
        assert y.shape == (len(x), len(clf.classes))
        assert torch.allclose(y, forward(x), rtol=0, atol=1e-5)  # batched kernels may round the last bits apart


def test_tuples_are_split_and_an_error_reaches_every_caller_of_its_batch():
    batcher = MicroBatcher()
    got = call_together(batcher, lambda x: (x * 2, x.sum(1)), [torch.full((1, 2), float(i)) for i in range(4)])
    assert [g[0].tolist() for g in got] == [[[2.0 * i] * 2] for i in range(4)]
    assert [g[1].tolist() for g in got] == [[2.0 * i] for i in range(4)]

    def boom(x):
        raise RuntimeError("out of memory")

    failing = MicroBatcher()
    errors = call_together(failing, boom, [torch.zeros(1, 2) for _ in range(3)])
    assert all(isinstance(e, RuntimeError) and "out of memory" in str(e) for e in errors)
    assert batcher(lambda x: x + 1, torch.zeros(1, 1)).item() == 1.0  # a lone call after others: runs at once


def test_batches_are_capped_at_max_rows():
    batcher = MicroBatcher(max_rows=4)
    sizes: list[int] = []

    def record(x):
        sizes.append(len(x))
        return x

    got = call_together(batcher, record, [torch.full((2, 1), float(i)) for i in range(5)])
    assert max(sizes) <= 4 and sum(sizes) == 10
    assert [g[:, 0].tolist() for g in got] == [[float(i)] * 2 for i in range(5)]


def test_forwards_share_the_cores_and_thread_counts_are_restored():
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

    share = ComputeShare(4)
    with share.share() as alone:
        with share.share() as second:
            with share.share() as third:
                assert torch.get_num_threads() == third == 1
    assert (alone, second) == (4, 2) and share.running == 0
    with share.reserve(1):  # a training relayed in this process holds a core: /proc cannot tell
        with share.share() as beside_training:
            assert beside_training == 3
    with share.share() as after:
        assert after == 4


def test_a_background_training_reserves_its_cores_while_it_runs(monkeypatch):
    from flowerdemo import device

    share = device.ComputeShare(2)
    monkeypatch.setattr(device, "COMPUTE", share)
    seen = []

    def events():
        for i in range(3):
            seen.append(share.reserved)
            yield i

    assert list(device.in_background(events(), threads=1)) == [0, 1, 2]
    assert seen == [1, 1, 1] and share.reserved == 0


def test_work_called_in_background_runs_niced_with_a_one_core_budget_and_the_callers_context():
    import contextvars
    import os

    from flowerdemo import device

    request = contextvars.ContextVar("request", default=None)
    request.set("visitor-1")  # what a web framework's request context carries (Gradio's progress)

    def work(x: int):
        return (x, threading.get_native_id(), device.thread_budget(), torch.get_num_threads(), request.get(),
                os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    x, tid, budget, threads, seen, nice = device.call_in_background(work, 7, nice=5)
    assert (x, budget, threads, seen) == (7, 1, 1, "visitor-1") and tid != threading.get_native_id()
    assert nice >= 5 and device.thread_budget() is None  # the caller stays what it was

    def fails():
        raise FileNotFoundError("no such folder: photos")

    with pytest.raises(FileNotFoundError, match="photos"):
        device.call_in_background(fails)


def test_background_work_pauses_while_a_visitors_forward_runs_and_not_for_its_own(monkeypatch):
    from flowerdemo import device

    share = device.ComputeShare(2)
    monkeypatch.setattr(device, "COMPUTE", share)
    assert share.pause_for_visitors() < 0.05  # nobody is predicting
    device.pause_if_background()  # not background work: returns at once whatever visitors do

    inside, release = threading.Event(), threading.Event()

    def visitor():
        with share.share():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=visitor)
    t.start()
    inside.wait(5)
    threading.Timer(0.3, release.set).start()
    waited = device.call_in_background(lambda: share.pause_for_visitors(most=5.0))
    t.join()
    assert 0.25 <= waited < 2.0  # until the visitor's forward ended (and a short linger), not `most`
    assert share.pause_for_visitors(most=0.2) <= 0.25  # bounded even if visitors kept coming

    def own_forward_then_pause() -> float:
        with share.share():  # a training's own forward: not a visitor's
            pass
        return share.pause_for_visitors()

    assert device.call_in_background(own_forward_then_pause) < 0.05 and share.visitors == 0


def test_photos_decoded_by_background_work_use_its_budget(tmp_path, monkeypatch):
    from flowerdemo import device
    from flowerdemo.data import tensorcache
    from flowerdemo.data.dataset import Sample

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (i * 80, 20, 20)).save(paths[-1])
    samples = [Sample(p, 0) for p in paths]
    pools: list[int] = []
    real = tensorcache.ThreadPoolExecutor
    monkeypatch.setattr(tensorcache, "ThreadPoolExecutor", lambda max_workers: pools.append(max_workers) or real(max_workers))
    monkeypatch.setattr(tensorcache.os, "cpu_count", lambda: 4)
    tensors, _ = tensorcache.decode_samples(samples, 16)
    tensors_bg, _ = device.call_in_background(tensorcache.decode_samples, samples, 16)
    assert pools == [4, 1] and torch.equal(tensors.images, tensors_bg.images)


@pytest.mark.parametrize("twins", [False, True], ids=["torch", "onnxruntime"])
def test_concurrent_visitors_get_the_serial_answers(tiny, tmp_path, twins, monkeypatch):
    kinds = ["circle", "square", "triangle", "circle", "square", "triangle"]
    photos = [photo(tmp_path / f"{i}-{k}.png", k, size=64 + 16 * i) for i, k in enumerate(kinds)]
    if twins:
        pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "_enabled", twins)  # as app.main's runtime.enable(): forwards on the twin
    with running_app(tmp_path / "app", tiny) as (demo, url):
        if twins:  # built now, as app.main's warm-up does, so that every request below is served by it
            warm_up(demo.ctx.models.default_model())
        serial = [answer(new_client(url, tmp_path / "d-serial"), p) for p in photos]
        clients = [new_client(url, tmp_path / f"d{i}") for i in range(len(photos))]
        got: list = [None] * len(photos)
        gate = threading.Barrier(len(photos))

        def go(i: int) -> None:
            gate.wait()
            got[i] = answer(clients[i], photos[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(photos))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        if twins:
            clf = demo.ctx.models.default_model()
            twin = runtime.fast_forward(clf.model, clf.preprocessing.input_size)
            assert twin is not None and twin.runs >= 2 * len(photos)  # answers and heatmaps (batched or not)
    for alone, together in zip(serial, got, strict=True):
        assert together is not None
        want = {c["label"]: c["confidence"] for c in alone[0]["confidences"]}
        have = {c["label"]: c["confidence"] for c in together[0]["confidences"]}
        assert want.keys() == have.keys() and all(abs(want[k] - have[k]) < 1e-5 for k in want)
        assert together[4] == alone[4]  # the verdict headline too


def test_heatmaps_are_sent_as_jpeg_at_most_the_display_size(tiny, tmp_path):
    from ui.predict_tab import MAX_SIDE

    big = tmp_path / "big.png"
    photo(tmp_path / "small.png", "square", size=120)
    Image.open(tmp_path / "small.png").convert("RGB").resize((1600, 1200)).save(big)
    with running_app(tmp_path / "app", tiny) as (_, url):
        _, overlay, heatmap, *_ = answer(new_client(url, tmp_path / "d"), big)
    for path in (overlay, heatmap):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.size == (MAX_SIDE, MAX_SIDE * 3 // 4)  # the photo's shape, at the display size
        assert Path(path).stat().st_size < 200_000


def test_a_training_relayed_in_background_runs_niced_in_its_own_thread_and_stops_when_closed():
    import os

    from flowerdemo.device import in_background

    seen: list[tuple[int, int, int]] = []
    finished = threading.Event()

    def steps(n: int = 5):
        try:
            for i in range(n):
                seen.append((threading.get_native_id(), torch.get_num_threads(),
                             os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
                yield i
        finally:
            finished.set()

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert list(in_background(steps(3), threads=1, nice=5)) == [0, 1, 2]
    assert all(tid != threading.get_native_id() and n == 1 and nice == min(19, mine + 5) for tid, n, nice in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's priority is untouched

    finished.clear()
    relayed = in_background(steps(1000), threads=1, nice=5)
    next(relayed)
    relayed.close()  # a stopped training: over when close() returns
    assert finished.is_set() and len(seen) < 3 + 100  # it ran ahead by a few items, no more

    def failing():
        yield 1
        raise RuntimeError("out of disk")

    relayed = in_background(failing())
    assert next(relayed) == 1
    with pytest.raises(RuntimeError, match="out of disk"):
        next(relayed)


def test_a_cam_backpropagates_from_its_target_layer_only_and_gives_the_same_heatmap(tiny, tmp_path, monkeypatch):
    from contextlib import nullcontext

    import numpy as np

    import flowerdemo.infer.explain as explain_module
    from flowerdemo.infer.replicas import gradients_at, replica

    clf = load_checkpoint(tiny)
    with replica(clf.model) as model:
        target = {id(p) for p in model.target_layer.parameters()}
        with gradients_at(model, model.target_layer):
            assert {id(p) for p in model.parameters() if p.requires_grad} == target
        assert all(p.requires_grad for p in model.parameters())  # the replica goes back as it came
    image = Image.open(photo(tmp_path / "cam.png", "triangle", size=80))
    for method in ("gradcam", "layercam"):
        fast = explain_module.explain(clf, image, method=method)
        monkeypatch.setattr(explain_module, "gradients_at", lambda model, layer: nullcontext(model))
        full = explain_module.explain(clf, image, method=method)  # every parameter requiring gradients
        monkeypatch.undo()
        assert np.allclose(fast.heatmap, full.heatmap, rtol=0, atol=1e-6) and fast.heatmap.max() > 0
        assert fast.probabilities == pytest.approx(full.probabilities, abs=1e-6)


def test_identical_photos_at_the_same_moment_all_get_complete_pictures(tiny, tmp_path):
    """The pictures go to Gradio as files of the request's own, copied into its cache atomically: identical
    heatmaps of simultaneous visitors (Gradio names them by content) are never served half-written, and the
    request's own files are gone once it has answered."""
    from PIL import Image

    from ui.state import IMAGES_FOLDER

    same = photo(tmp_path / "same.png", "circle", size=120)
    n = 10
    with running_app(tmp_path / "app", tiny) as (demo, url):
        clients = [new_client(url, tmp_path / f"d{i}") for i in range(n)]
        got: list = [None] * n
        gate = threading.Barrier(n)

        def go(i: int) -> None:
            gate.wait()
            got[i] = answer(clients[i], same)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        left = list((demo.ctx.settings.work_dir / IMAGES_FOLDER).iterdir())
    assert left == []
    for out in got:
        assert out is not None
        for path in out[1:3]:  # overlay, heatmap
            with Image.open(path) as img:
                img.load()  # a truncated file fails here
                assert img.format == "JPEG" and max(img.size) <= 800
