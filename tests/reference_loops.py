"""The two optimisation loops as they were before they became one shared step (commit c28f825):
`flowerdemo/loops.py::train_one_epoch` (full mode) and `FastTrainer.epoch` (fast mode), copied
verbatim minus progress events. Kept only as the reference `test_train_step.py` compares the shared
step against: same seed, same batches -> bit-identical weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_starts(n: int, batch_size: int) -> list[int]:
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    return starts


def full_epoch(model, images, labels, augment, opt, sched, *, batch_size, autocast, scaler, grad_clip,
               label_smoothing, generator, aug_generator, channels_last, frozen) -> dict[str, float]:
    model.train()
    for m in frozen:
        m.eval()
    order = torch.randperm(len(labels), generator=generator)
    n = len(order)
    starts = batch_starts(n, batch_size)
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    seen = 0
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        idx = order[start:end]
        x = augment(images[idx], aug_generator)
        y = labels[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    return {"loss": float(loss_sum) / seen, "acc": int(correct) / seen}


def fast_epoch(head, tail, feats, labels, opt, sched, *, batch_size, steps_per_epoch, autocast, scaler,
               grad_clip, label_smoothing, generator, channels_last) -> dict[str, float]:
    """`tail` is None for head-only training (pooled features)."""
    head.train()
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    view = torch.randint(0, feats.shape[0], (n,), generator=generator)
    params = [p for group in opt.param_groups for p in group["params"]]
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    seen = 0
    for i in range(steps_per_epoch):
        idx = order[i * batch_size:(i + 1) * batch_size if i + 1 < steps_per_epoch else n]
        y = labels[idx]
        x = feats[view[idx], idx].float()
        if tail is not None:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                x = tail(x)
            x = x.float()
        logits = head(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return {"loss": float(loss_sum) / seen, "acc": int(correct) / seen}
