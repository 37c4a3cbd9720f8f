"""The grid and the actor of fedkd's Ray engine (:mod:`simulations.pool` runs them).

A :class:`RayGrid` is the in-process :class:`~simulations.engine.InlineGrid` with the
ClientApp calls farmed out to a pool of Ray actors (:class:`ClientWorker`):

- the Contexts of all simulated nodes live in the driver and travel with each message
  (the actor returns the updated ``context.state``), so any actor can serve any node and
  a restarted actor loses nothing;
- a record that several messages share and that is big (the global weights broadcast to
  every sampled client) goes to Ray's object store once; every other record travels
  inside the call (Ray inlines small arguments: no object-store round trip per message);
- each actor has up to :data:`PIPELINE_DEPTH` calls queued, so it never waits for the
  driver between two clients; messages to the same node run in order; short messages go
  several to a call;
- no LinkState, no per-node polling thread, no gRPC: the driver blocks in ``ray.wait``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedkd.run.interrupt import check_stop
from simulations.engine import InlineGrid

logger = logging.getLogger(__name__)

#: Calls queued on one actor at a time: one running, one waiting, so an actor never
#: idles while the driver handles the previous reply.
PIPELINE_DEPTH = 2
#: Work one actor call should carry: short messages (a tiny client round) are batched
#: until a call takes about this long, so Ray's fixed cost per call is paid once per batch;
#: long ones go one per call, so the end of a round stays balanced across actors.
BATCH_SECONDS = 0.05
MAX_BATCH = 32
#: A record shared by several queued messages goes to the object store once (instead of
#: inside every call that carries it) from this size on.
SHARED_RECORD_BYTES = 4096
#: Longest single wait in ``ray.wait`` before the driver checks for Ctrl-C again.
WAIT_SLICE_SECONDS = 0.2
#: The reason a message gets when the actor running it died (the strategy resends it once,
#: see ``strategies.base.TRANSIENT_ERRORS``).
ACTOR_DIED = "ActorUnavailableError"


class ClientWorker:
    """One Ray actor: runs the ClientApp on messages for whichever node they are for."""

    def __init__(self, client_app: ClientApp, torch_threads: int, env: dict[str, str]) -> None:
        os.environ.update(env)
        if torch_threads > 0:
            import torch

            torch.set_num_threads(torch_threads)
        self.client_app = client_app

    def pid(self) -> int:
        return os.getpid()

    def new_run(self) -> None:
        """A kept actor starts another run (:func:`keep_pool`): forget what the previous run
        cached in this process (fedkd's client runtimes and data), as a new actor would."""
        runtime = sys.modules.get("fedkd.apps.runtime")
        if runtime is not None:
            runtime.clear_client_runtimes()

    def run(
        self, metadata: Any, content: RecordDict, context: Context
    ) -> tuple[Message, RecordDict]:
        """The reply and the node's updated state; an exception becomes an Error reply."""
        message = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
        try:
            reply = self.client_app(message, context)
        except Exception as exc:  # the engine's job, as Flower's workers do
            logger.debug("ClientApp raised on node %s", context.node_id, exc_info=True)
            reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        return reply, context.state

    def run_batch(
        self,
        metadatas: list[Any],
        contexts: list[Context],
        layouts: list[list[tuple[str, Any, int]]],
        *shared: Any,
    ) -> tuple[list[tuple[Message, RecordDict]], float]:
        """:meth:`run` for several nodes' messages in one Ray call, and the seconds they
        took. A message's content is rebuilt from its layout: ``(name, record, -1)`` for a
        record that came inside the call, ``(name, None, i)`` for ``shared[i]`` (a top-level
        argument, which Ray fetches from the object store and deserializes for each
        position, so no two messages share a record object)."""
        started = time.perf_counter()
        results = []
        for metadata, context, layout in zip(metadatas, contexts, layouts, strict=True):
            content = RecordDict(
                {name: shared[i] if record is None else record for name, record, i in layout}
            )
            results.append(self.run(metadata, content, context))
        return results, time.perf_counter() - started


@dataclass
class _Task:
    key: int
    node_id: int
    message: Message


@dataclass
class _Call:
    """One actor call: the messages it carries, all of one message type."""

    actor: int
    kind: str
    tasks: list[_Task]


class RayGrid(InlineGrid):
    """A Grid whose ClientApp calls run on a pool of Ray actors (see the module docstring).

    ``send_and_receive`` returns the replies in the order of the messages, as the inline
    grid does, so both give the same results for the same seed. A reply that misses the
    deadline is dropped; its client still finishes, and its state update is kept (as on
    Flower's engine and a real SuperNode).
    """

    synchronous = True  # strategies call send_and_receive, which checks for Ctrl-C itself

    def __init__(
        self, client_app: ClientApp, num_nodes: int, actors: list[Any], *, seed: int = 0
    ) -> None:
        super().__init__(client_app, num_nodes, seed=seed)
        if not actors:
            raise ValueError("RayGrid needs at least one actor")
        self.actors = actors
        self._load = [0] * len(actors)
        self._queue: deque[tuple[int, Message]] = deque()
        self._inflight: dict[Any, _Call] = {}
        # seconds per message, per message type, as the actors report them (batch sizing)
        self._seconds: dict[str, float] = {}
        self._busy_nodes: set[int] = set()
        self._done: dict[int, Message] = {}
        self._wanted: set[int] = set()
        # how many messages queued since the grid was last idle carry each record object,
        # and for each shared one its object-store copy (None: small, sent inline), kept
        # with the record (an id is only unique while its object lives)
        self._uses: Counter[int] = Counter()
        self._record_refs: dict[int, tuple[Any, Any]] = {}
        self._next_key = 0
        # an actor whose process died gets no work until a probe says Ray restarted it
        self._probes: dict[Any, int] = {}
        self._suspended: set[int] = set()
        self._gone: set[int] = set()

    # ------------------------------------------------------------------ Grid interface
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        keys = self._enqueue(messages)
        self._progress(wait=0.0)
        return [str(k) for k in keys]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._progress(wait=0.0)
        found = []
        for message_id in message_ids:
            reply = self._done.pop(int(message_id), None)
            if reply is not None:
                self._wanted.discard(int(message_id))
                found.append(reply)
        return found

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        keys = self._enqueue(messages)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not all(k in self._done for k in keys):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            check_stop("while clients were training")
            self._progress(wait=min(WAIT_SLICE_SECONDS, remaining))
        replies = [self._done.pop(k) for k in keys if k in self._done]
        self._abandon(set(keys))
        if len(replies) < len(keys):
            logger.info("%s of %s replies missed the deadline", len(keys) - len(replies), len(keys))
        return replies

    # ------------------------------------------------------------------ scheduling
    def _enqueue(self, messages: Iterable[Message]) -> list[int]:
        keys = []
        for message in messages:
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no simulated node {message.metadata.dst_node_id}")
            self._next_key += 1
            keys.append(self._next_key)
            self._queue.append((self._next_key, message))
            self._wanted.add(self._next_key)
            self._uses.update(id(record) for record in message.content.values())
        return keys

    def reusable(self) -> bool:
        """Whether the actors can serve another run: nothing queued or running (no
        straggler left over), none dead or restarting."""
        return not (self._queue or self._inflight or self._probes or self._suspended)

    def _abandon(self, keys: set[int]) -> None:
        """Forget messages nobody waits for any more: queued ones are not sent, running
        ones finish (their state update is kept) and their replies are dropped."""
        self._wanted -= keys
        self._queue = deque(item for item in self._queue if item[0] not in keys)
        for key in keys:
            self._done.pop(key, None)

    def _layout(self, content: RecordDict, shared: list[Any]) -> list[tuple[str, Any, int]]:
        """How one message's content travels (see :meth:`ClientWorker.run_batch`): a big
        record that other queued messages carry too goes once to the object store and
        then by reference (appended to ``shared``); any other record inside the call."""
        import ray

        layout: list[tuple[str, Any, int]] = []
        for name, record in content.items():
            cached = self._record_refs.get(id(record))
            if cached is None or cached[0] is not record:
                shared_by_others = self._uses[id(record)] > 1
                big = shared_by_others and record.count_bytes() >= SHARED_RECORD_BYTES
                cached = (record, ray.put(record) if big else None)
                if shared_by_others:  # decided once per record
                    self._record_refs[id(record)] = cached
            if cached[1] is None:
                layout.append((name, record, -1))
            else:
                layout.append((name, None, len(shared)))
                shared.append(cached[1])
        return layout

    def _batch_size(self, kind: str) -> int:
        """Messages per call for this message type: enough for :data:`BATCH_SECONDS` of
        work once their cost is known (one until then), at most a fair share of the queue."""
        seconds = self._seconds.get(kind)
        size = 1 if seconds is None else int(BATCH_SECONDS / max(seconds, 1e-4))
        share = -(-len(self._queue) // max(1, 2 * len(self.actors)))  # ceil
        return max(1, min(size, MAX_BATCH, share))

    def _dispatch(self) -> None:
        waiting: deque[tuple[int, Message]] = deque()
        while self._queue:
            usable = [i for i in range(len(self.actors)) if i not in self._suspended]
            actor = min(usable, key=self._load.__getitem__) if usable else -1
            if actor < 0 or self._load[actor] >= PIPELINE_DEPTH:
                break
            kind = self._queue[0][1].metadata.message_type
            size = self._batch_size(kind)
            batch: list[_Task] = []
            while self._queue and len(batch) < size:
                key, message = self._queue[0]
                node_id = message.metadata.dst_node_id
                if message.metadata.message_type != kind:
                    break
                self._queue.popleft()
                if node_id in self._busy_nodes:
                    waiting.append((key, message))
                    continue
                batch.append(_Task(key, node_id, message))
                self._busy_nodes.add(node_id)
            if not batch:
                continue
            shared: list[Any] = []
            layouts = [self._layout(t.message.content, shared) for t in batch]
            ref = self.actors[actor].run_batch.remote(
                [t.message.metadata for t in batch],
                [self.contexts[t.node_id] for t in batch],
                layouts,
                *shared,
            )
            self._inflight[ref] = _Call(actor, kind, batch)
            self._load[actor] += 1
        waiting.extend(self._queue)
        self._queue = waiting
        if not self._queue and not self._inflight:
            self._record_refs.clear()
            self._uses.clear()

    def _progress(self, *, wait: float) -> None:
        """Dispatch what can run, then collect what finished within ``wait`` seconds."""
        import ray

        self._dispatch()
        if not self._inflight and not self._probes:
            if wait > 0 and self._queue:  # every actor is down: let Ray restart them
                time.sleep(wait)
            return
        refs = [*self._inflight, *self._probes]
        ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if ref in self._probes:
                self._probed(ref)
                continue
            call = self._inflight.pop(ref)
            self._load[call.actor] -= 1
            for task, reply in zip(call.tasks, self._results(ref, call), strict=True):
                self._busy_nodes.discard(task.node_id)
                if task.key in self._wanted:
                    self._done[task.key] = reply
        if ready:
            self._dispatch()

    def _results(self, ref: Any, call: _Call) -> list[Message]:
        """The replies of one call, the nodes' states updated; every message of a call
        whose actor died gets an :data:`ACTOR_DIED` error."""
        import ray
        from ray.exceptions import RayActorError

        try:
            results, seconds = ray.get(ref)
        except RayActorError as exc:  # the actor's process died (Ray restarts it)
            logger.warning(
                "the actor running nodes %s died: %s",
                [t.node_id for t in call.tasks],
                type(exc).__name__,
            )
            self._suspend(call.actor)
            return [
                Message(
                    Error(code=3, reason=f"{ACTOR_DIED}: the client's process died"),
                    reply_to=task.message,
                )
                for task in call.tasks
            ]
        per_message = seconds / len(call.tasks)
        previous = self._seconds.get(call.kind)
        self._seconds[call.kind] = (
            per_message if previous is None else 0.7 * previous + 0.3 * per_message
        )
        replies = []
        for task, (reply, state) in zip(call.tasks, results, strict=True):
            self.contexts[task.node_id].state = state
            replies.append(reply)
        return replies

    def _suspend(self, actor: int) -> None:
        if actor not in self._suspended:
            self._suspended.add(actor)
            self._probes[self.actors[actor].pid.remote()] = actor

    def _probed(self, ref: Any) -> None:
        """A probe of a suspended actor answered: back to work, or probe again (still
        restarting), or stay out (Ray gave up on it after ``max_restarts``)."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        actor = self._probes.pop(ref)
        try:
            ray.get(ref)
        except ActorDiedError as exc:
            # the last line of Ray's message is the actor's own error when it failed to
            # start (the actors are not waited for at start: this is where that shows)
            cause = next((line for line in reversed(str(exc).splitlines()) if line.strip()), "")
            logger.error("actor %s is gone for good (out of restarts): %s", actor, cause)
            self._gone.add(actor)
            if len(self._gone) == len(self.actors):
                raise RuntimeError(
                    "every Ray actor died more often than backend.max_restarts allows; "
                    f"the last one: {cause}"
                ) from None
            return
        except RayActorError:
            time.sleep(0.05)
            self._probes[self.actors[actor].pid.remote()] = actor
            return
        self._suspended.discard(actor)
