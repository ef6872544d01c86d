"""An exponential moving average of the trained weights (EMA): the weights scored, kept and saved are
the average of the last steps' weights rather than the last step's own.

`WeightAverage` updates its copy after every optimiser step; the trainer puts the average into the
model before the validation split is scored (so the engine keeps and saves it) and takes the live
weights back before the next epoch trains. The horizon is given in epochs, not as a decay, so that it
means the same on a small dataset as on a large one."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def decay_for(horizon_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay whose averaging horizon (1 / (1 - decay) steps) spans `horizon_epochs` epochs."""
    return 1.0 - 1.0 / max(1.0, horizon_epochs * steps_per_epoch)


class WeightAverage:
    """EMA of `params` (the trainable ones). Early steps average with a smaller decay,
    min(decay, (1 + t) / (10 + t)), so the first epochs' average is not dominated by the initial weights."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.steps = 0
        self.average = [p.detach().clone() for p in self.params]
        self.live: list[torch.Tensor] | None = None  # the training weights while the average is in the model

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def use_average(self) -> None:
        """Put the average into the model (for scoring and keeping); the live weights are set aside."""
        if self.live is None:
            self.live = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.average)

    @torch.no_grad()
    def use_live(self) -> None:
        """Put the training weights back (before the next steps)."""
        if self.live is not None:
            torch._foreach_copy_([p.data for p in self.params], self.live)
            self.live = None
