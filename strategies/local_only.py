"""Local-only baseline: every client trains alone; nothing is shared (the floor)."""

from __future__ import annotations

from typing import ClassVar

from flwr.app import ArrayRecord

from strategies.base import ClientReply, FedKDStrategy, RoundState


class LocalOnly(FedKDStrategy):
    """Local training only: the floor of every comparison.

    Round ``t``: each sampled client continues training its own model (kept in
    ``context.state``) on its private data. Nothing is sent to the server except
    evaluation-only test predictions, so ``uplink_bytes`` is 0 and there is no student:
    ``student_accuracy`` is ``null``. Compare ``client_accuracy_mean`` (each client's model
    on the server test set) and ``personalized_accuracy_mean`` (on its own local test
    split) with the other methods.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies
        See :class:`strategies.base.FedKDStrategy`.

    Client keys honoured: ``keep-model``.
    """

    sends_weights = False
    keeps_client_models = True
    headline_metric: ClassVar[str] = "local_on_global_test_accuracy_mean"  # no student: the clients
    has_student: ClassVar[bool] = False

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Nothing to aggregate: the diagnostics were recorded from the replies."""
        return ArrayRecord()
