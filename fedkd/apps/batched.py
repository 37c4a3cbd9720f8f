"""The ClientApp's local training for many clients at once (``backend=batched``).

A ``train`` message runs in three stages (:mod:`fedkd.apps.client`): :func:`begin_train`
(start weights, warm-up, digest), local training, :func:`finish_train` (every payload,
through the payload layer). ``backend=batched`` runs the first stage client by client,
keeps each client's model state, trains the clients that share an architecture and
training settings together (:func:`fedkd.train_batched.train_batched`), then finishes each
client with its own trained weights: the replies are the messages every other backend
sends, with the same bytes, validation and release ledger; only the training is batched.

A client whose local training cannot be batched (:func:`batching_refusal`) trains
sequentially, as on ``backend=inline``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from fedkd.apps.client import TrainJob
from fedkd.distill.self_train import check_born_again
from fedkd.train_batched import BatchedJob, predict_batched, train_batched
from fedkd.train_batched import batching_refusal as model_refusal
from fedkd.wire import keys
from fedkd.wire.payloads import Payload


@dataclass
class PendingJob:
    """A client between :func:`begin_train` and :func:`finish_train`, with its model's
    state (the shared model object then holds another client's weights)."""

    job: TrainJob
    state: dict[str, Tensor]

    @classmethod
    def snapshot(cls, job: TrainJob) -> PendingJob:
        model = job.runtime.model
        return cls(job, {k: v.detach().clone() for k, v in model.state_dict().items()})

    def restore(self) -> None:
        """Put this client's (trained) weights back into the shared model object."""
        self.job.runtime.model.load_state_dict(self.state, strict=True)


def batching_refusal(job: TrainJob) -> str | None:
    """Why this client's local training must run sequentially (None: it can be batched).
    The reasons are stable phrases: the grid reports each one once per run."""
    runtime, client = job.runtime, job.client
    if client.local_epochs <= 0:
        return "no local epochs this round"
    if runtime.privacy.name == "dpsgd":
        return "DP-SGD (per-sample clipping) trains client by client"
    for payload in job.payloads:
        if type(payload).train is not Payload.train:
            return f"payload {payload.name!r} trains with a loss of its own"
    local = runtime.setup.local
    if local.self_distill is not None:
        return "BYOT self-distillation (client.self_distill) trains client by client"
    born = check_born_again(local.born_again)
    if born is not None and born["generations"] > 0:
        return "born-again generations (client.born_again) train client by client"
    return model_refusal(runtime.model)


def group_pending(pending: list[PendingJob]) -> list[list[PendingJob]]:
    """Clients that can train in one batched call: same model object (architecture),
    training settings and device."""
    groups: dict[tuple[int, object, str], list[PendingJob]] = defaultdict(list)
    for item in pending:
        job = item.job
        key = (id(job.runtime.model), job.client.train_settings, str(job.runtime.device))
        groups[key].append(item)
    return list(groups.values())


def train_group(group: list[PendingJob]) -> None:
    """Train one group's clients together; each item's ``state`` becomes its trained
    weights and its round's ``train_loss`` the loss sequential training reports."""
    first = group[0].job
    jobs = [
        BatchedJob(
            state=item.state,
            x=item.job.client.client_data.train_x,
            y=item.job.client.client_data.train_y,
            seed=item.job.client.seed,
            proximal_mu=item.job.client.float_option(keys.PROXIMAL_MU, 0.0),
        )
        for item in group
    ]
    results = train_batched(
        first.runtime.model, jobs, settings=first.client.train_settings, device=first.runtime.device
    )
    for item, (state, report) in zip(group, results, strict=True):
        item.state = state
        item.job.client.train_loss = report.loss


def predict_group(group: list[PendingJob]) -> None:
    """Predict the inputs every client of the group shares (the payloads'
    :meth:`~fedkd.wire.payloads.Payload.shared_inputs`) with all their trained models at
    once; each payload then reads its client's rows through ``ClientRound.predict``."""
    first = group[0].job
    shared = _shared_inputs(first)
    for item in group[1:]:
        names = _shared_inputs(item.job)
        shared = {n: x for n, x in shared.items() if n in names and names[n].shape == x.shape}
    for name, x in shared.items():
        probs = predict_batched(
            first.runtime.model, [item.state for item in group], x, device=first.runtime.device
        )
        for item, values in zip(group, probs, strict=True):
            item.job.client.predicted[name] = values


def _shared_inputs(job: TrainJob) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for payload in job.payloads:
        inputs.update(payload.shared_inputs(job.client))
    return inputs
