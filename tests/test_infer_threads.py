"""One loaded classifier, many threads: predictions and explanations at once give the serial results and
leave the shared model as it was (no hook, no requires_grad flag changed, not even while they run)."""

from __future__ import annotations

import gc
import random
import threading
import weakref

import numpy as np
import pytest
import torch

from flowerdemo.infer import explain as explain_module
from flowerdemo.infer import replicas
from flowerdemo.infer.explain import explain
from flowerdemo.infer.predict import predict
from flowerdemo.models.checkpoints import load_checkpoint
from flowerdemo.models.registry import FlowerNet, build_model, freeze
from tests.synth import draw_sample

THREADS = 4
METHODS = ("gradcam", "gradcam++", "eigencam")  # gradients, gradients squared, activations only
IMAGES = [draw_sample(kind, 96, random.Random(seed), quadrant=q)
          for kind, seed, q in (("circle", 1, 0), ("square", 2, 3), ("triangle", 3, 1), ("circle", 4, None))]
JOBS = [(what, i) for i in range(len(IMAGES)) for what in ("predict", *METHODS)]
RENDEZVOUS_TIMEOUT_S = 120  # a deadlock guard only: the serialised (locked) explain of old never gets there


def _load(trained_run):
    """The session's model with its backbone frozen as fast mode trains it: the flags are mixed, so a CAM
    that turned them on for everyone would show."""
    clf = load_checkpoint(trained_run.run_dir)
    freeze(clf.model, "backbone")
    return clf


def _run(clf, job):
    what, i = job
    if what == "predict":
        return predict(clf, IMAGES[i])
    return explain(clf, IMAGES[i], method=what)


def _state(model: torch.nn.Module) -> tuple:
    """requires_grad of every parameter, and the keys of every hook dict of every module."""
    flags = tuple(p.requires_grad for p in model.parameters())
    hooks = tuple((name, attr, tuple(value)) for name, m in model.named_modules()
                  for attr, value in sorted(vars(m).items()) if "hook" in attr and isinstance(value, dict))
    return flags, hooks


def _assert_same(got, want) -> None:
    if isinstance(want, dict):  # predict
        assert list(got) == list(want)
        assert np.allclose(list(got.values()), list(want.values()), rtol=0, atol=1e-6)
        return
    assert (got.class_name, got.method) == (want.class_name, want.method)
    assert list(got.probabilities) == list(want.probabilities)
    assert np.allclose(list(got.probabilities.values()), list(want.probabilities.values()), rtol=0, atol=1e-6)
    assert np.allclose(got.heatmap, want.heatmap, rtol=0, atol=1e-5)


def test_predict_and_explain_from_many_threads_match_the_serial_results(trained_run):
    serial = _load(trained_run)
    expected = {job: _run(serial, job) for job in JOBS}

    shared = _load(trained_run)  # a fresh model: the threads also race to create its first replicas
    model = shared.model
    # a hook of our own on the shared target layer: must stay, and must see the predictions' forwards only
    # (a CAM on the shared model, or a replica that copied this hook, would add forwards)
    seen = []
    # one entry per image: concurrent predictions may share one batched forward (infer/batching.py)
    counter = model.target_layer.register_forward_hook(
        lambda m, args, out: seen.extend([threading.get_ident()] * len(out)))
    before = _state(model)
    assert replicas.MAX_REPLICAS >= THREADS - 1

    # Each thread's first job: threads 0-2 explain with the three methods, thread 3 predicts. Their first
    # model forwards wait for each other, so three CAMs (hooks registered, gradients on) and a prediction
    # are in flight at the same moment; the shared model's state is read right there.
    rendezvous = threading.Barrier(THREADS, timeout=RENDEZVOUS_TIMEOUT_S)
    local = threading.local()
    during = []

    def first_forward_meets_the_others(module, args):
        if isinstance(module, FlowerNet) and not getattr(local, "met", False):
            local.met = True
            rendezvous.wait()
            during.append(_state(model))

    orders = []
    for t in range(THREADS):
        first = (METHODS[t], t) if t < len(METHODS) else ("predict", t)
        orders.append([first] + [job for job in JOBS[t:] + JOBS[:t] if job != first])
    results: dict[int, list] = {t: [] for t in range(THREADS)}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for job in orders[t]:
                results[t].append((job, _run(shared, job)))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            rendezvous.abort()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(first_forward_meets_the_others)
    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handle.remove()
    if errors:
        raise errors[0]

    assert len(during) == THREADS and all(state == before for state in during)
    for t in range(THREADS):
        assert [job for job, _ in results[t]] == orders[t]
        for job, got in results[t]:
            _assert_same(got, expected[job])
    assert _state(model) == before
    n_predicts = sum(job[0] == "predict" for order in orders for job in order)
    assert len(seen) == n_predicts  # one image per prediction: explanations never ran the shared model
    counter.remove()
    assert not replicas.has_hooks(model)
    pool = replicas.pool_for(model)
    assert pool.in_use == 0 and THREADS - 1 <= pool.idle <= replicas.MAX_REPLICAS


def test_a_replica_shares_the_weights_but_not_hooks_or_flags(trained_run):
    clf = _load(trained_run)
    model = clf.model
    handle = model.target_layer.register_forward_hook(lambda m, args, out: None)
    flags = [p.requires_grad for p in model.parameters()]
    replica = replicas.make_replica(model)
    assert replicas.shares_weights(replica, model)  # views of the same memory: no weight is copied
    assert all(p.requires_grad for p in replica.parameters()) and not replica.training
    assert not replicas.has_hooks(replica) and replicas.has_hooks(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    x = torch.randn(2, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(replica(x), model(x))
    handle.remove()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "efficientnet_b0", "convnext_tiny"])
def test_a_replica_of_every_kind_of_backbone_computes_what_the_model_computes(name):
    """Replicas start without hooks: a backbone that needed its own hooks to compute would differ here."""
    torch.manual_seed(0)
    model = build_model(name, 3, pretrained=False).eval().to(memory_format=torch.channels_last)
    replica = replicas.make_replica(model)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(replica(x), model(x))
    assert replicas.shares_weights(replica, model) and replica.target_layer is not model.target_layer


def test_a_failed_explanation_gives_its_replica_back_clean(trained_run, monkeypatch):
    clf = _load(trained_run)

    class Boom:
        def __init__(self, index):
            pass

        def __call__(self, output):
            raise RuntimeError("target failed")

    monkeypatch.setattr(explain_module, "ClassifierOutputTarget", Boom)
    for _ in range(replicas.MAX_REPLICAS + 1):  # a lost slot each time would leave none for the last
        with pytest.raises(RuntimeError, match="target failed"):
            explain(clf, IMAGES[0], target="circle")
    pool = replicas.pool_for(clf.model)
    assert pool.in_use == 0 and pool.idle == 1
    with replicas.replica(clf.model) as replica:
        assert not replicas.has_hooks(replica) and all(p.grad is None for p in replica.parameters())
    monkeypatch.undo()
    assert explain(clf, IMAGES[0]).heatmap.max() > 0


def test_replicas_follow_the_model_when_its_weights_change(trained_run):
    """In place (replicas see the same memory) or with new tensors (the pool notices and starts over)."""
    clf, reference = _load(trained_run), _load(trained_run)
    explain(clf, IMAGES[0])  # a replica now exists
    with torch.no_grad():
        clf.model.head[-1].weight.mul_(-1)  # in place: the prediction flips away from the right class
        reference.model.head[-1].weight.mul_(-1)
    assert explain(clf, IMAGES[0]).probabilities == pytest.approx(explain(reference, IMAGES[0]).probabilities, abs=1e-6)

    state = {k: v.clone() for k, v in clf.model.state_dict().items()}
    bias = f"head.{len(clf.model.head) - 1}.bias"
    state[bias] = state[bias] + torch.arange(len(clf.classes), dtype=torch.float32)
    clf.model.load_state_dict(state, assign=True)  # new tensors: the old replicas would not see them
    reference.model.load_state_dict(state)
    got, want = explain(clf, IMAGES[1]), explain(reference, IMAGES[1])
    assert got.probabilities == pytest.approx(want.probabilities, abs=1e-6)
    assert np.allclose(got.heatmap, want.heatmap, rtol=0, atol=1e-5)


def test_a_dropped_classifier_takes_its_replicas_with_it(trained_run):
    clf = _load(trained_run)
    explain(clf, IMAGES[0])
    assert replicas.pool_for(clf.model).idle == 1
    gone = weakref.ref(clf.model)
    del clf
    gc.collect()
    assert gone() is None  # the pool (a WeakKeyDictionary entry) does not keep the model alive

