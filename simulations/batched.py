"""``backend=batched``: the inline engine with the clients' local training batched.

:class:`BatchedGrid` is :class:`simulations.engine.InlineGrid` (this process, one
persistent Context per node, a copy of each message) except for ``train`` messages: it
runs every client's first stage (:func:`fedkd.apps.client.begin_train`), trains the clients
that can be batched together (:mod:`fedkd.apps.batched`, ``torch.func.vmap`` over their
stacked parameters), then finishes each client (:func:`fedkd.apps.client.finish_train`:
its payloads, through the payload layer). A client that cannot be batched trains
sequentially; the run says so once per reason.

Deadlines (``round_timeout``) apply, as on the inline engine, to each client's own time:
its two stages plus its share of the batched training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedkd.apps.batched import (
    PendingJob,
    batching_refusal,
    group_pending,
    predict_group,
    train_group,
)
from fedkd.apps.client import begin_train, error_reply, finish_train, train_locally
from fedkd.run.interrupt import check_stop
from simulations.engine import InlineGrid, copy_message, set_task_identity, stop_on_ctrl_c

logger = logging.getLogger(__name__)


class BatchedGrid(InlineGrid):
    """An :class:`InlineGrid` that trains the clients of a ``train`` broadcast together."""

    def __init__(
        self, client_app: ClientApp, num_clients: int, *, compute_threads: int = 1
    ) -> None:
        super().__init__(client_app, num_clients)
        self.compute_threads = compute_threads
        self.reported: set[str] = set()
        #: clients trained batched / sequentially so far (the tests and the log read them)
        self.batched_clients = 0
        self.sequential_clients = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            return super().send_and_receive(messages, timeout=timeout)
        replies: list[Message | None] = [None] * len(messages)
        seconds = [0.0] * len(messages)
        pending: list[tuple[int, PendingJob]] = []
        for index, message in enumerate(messages):
            started = time.monotonic()
            if message.metadata.message_type != MessageType.TRAIN:
                replies[index] = self.deliver(message)
            else:
                item = self._begin(message)
                if isinstance(item, PendingJob):
                    pending.append((index, item))
                else:
                    replies[index] = item
            seconds[index] = time.monotonic() - started
        where = {id(item): index for index, item in pending}
        for group in group_pending([item for _, item in pending]):
            started = time.monotonic()
            try:
                with torch_threads(self.compute_threads):
                    train_group(group)
                    predict_group(group)
                failure = None
            except Exception as exc:  # an error in one group fails its clients only
                failure = exc
            share = (time.monotonic() - started) / len(group)
            for item in group:
                index = where[id(item)]
                started = time.monotonic()
                replies[index] = self._finish(item, failure)
                seconds[index] += share + time.monotonic() - started
            self.batched_clients += 0 if failure else len(group)
        kept = []
        for reply, spent in zip(replies, seconds, strict=True):
            assert reply is not None
            if timeout is not None and spent > timeout:
                logger.info(
                    "reply from node %s arrived after the timeout", reply.metadata.src_node_id
                )
                continue
            kept.append(reply)
        return kept

    def _begin(self, message: Message) -> PendingJob | Message:
        """The first stage; a client that cannot be batched is trained and finished here."""
        context = self.contexts[message.metadata.dst_node_id]
        check_stop("while clients were training")
        message = copy_message(message)
        try:
            job = begin_train(message, context)
            reason = batching_refusal(job)
            if reason is None:
                return PendingJob.snapshot(job)
            self._report(reason)
            self.sequential_clients += 1
            train_locally(job)
            return finish_train(job)
        except Exception as exc:
            return error_reply(exc, message, context, "train")

    def _finish(self, item: PendingJob, failure: Exception | None) -> Message:
        job = item.job
        check_stop("while clients were training")
        try:
            if failure is not None:
                raise failure
            item.restore()
            return finish_train(job)
        except Exception as exc:
            return error_reply(exc, job.message, job.context, "train")

    def _report(self, reason: str) -> None:
        if reason not in self.reported:
            self.reported.add(reason)
            logger.warning("backend=batched: some clients train sequentially: %s", reason)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` within the block (0: every core this
    process may use), then put back."""
    before = torch.get_num_threads()
    wanted = count or len(os.sched_getaffinity(0))
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_batched(
    server_app: ServerApp, client_app: ClientApp, *, num_clients: int, compute_threads: int = 1
) -> BatchedGrid:
    """Run the apps in this process on a :class:`BatchedGrid` (``backend=batched``);
    ``compute_threads`` (``backend.compute_threads``) run the batched training and
    prediction."""
    set_task_identity()
    grid = BatchedGrid(client_app, num_clients, compute_threads=compute_threads)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with warnings.catch_warnings(), stop_on_ctrl_c():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        server_app(grid, context)
    if grid.batched_clients:
        logger.info(
            "backend=batched: %d client rounds trained batched, %d sequentially",
            grid.batched_clients,
            grid.sequential_clients,
        )
    return grid
