"""FedAvg baseline: the example-weighted mean of client weights is the global model."""

from __future__ import annotations

from typing import ClassVar

from flwr.app import Array, ArrayRecord

from fedkd.wire.arrays import array_values
from fedkd.wire.payloads import ModelWeights
from strategies.base import ClientReply, FedKDStrategy, RoundState, weighted_average


class FedAvg(FedKDStrategy):
    """Federated Averaging (McMahan et al., 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data").

    Round ``t``::

        send w_t to the sampled clients S_t
        each client k in S_t: w_k <- local SGD from w_t on its private data (n_k examples)
        w_{t+1} = sum_k n_k w_k / sum_k n_k

    No distillation: the global model *is* the student, so ``student_accuracy`` of a
    FedAvg run is the FedAvg model's accuracy, the weight-sharing baseline for every
    distillation method. Every client must train the student's architecture.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies
        See :class:`strategies.base.FedKDStrategy`.

    Client keys honoured: ``arrays`` (global weights in), ``share-weights`` (true),
    ``num-examples`` (the averaging weight).
    """

    payloads = (ModelWeights.name,)
    #: The averaged weights are loaded into the student: one architecture for all.
    requires_student_architecture: ClassVar[bool] = True

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Example-weighted average of the returned weights, loaded into the student."""
        record = average_replies(replies)
        self.assets.student.load_state_dict(record.to_torch_state_dict(), strict=True)
        return record


def average_replies(replies: list[ClientReply]) -> ArrayRecord:
    """The example-weighted average of the weights in ``replies`` as an ArrayRecord."""
    averaged = weighted_average(
        [
            {name: array_values(array) for name, array in r.values[ModelWeights.name].items()}
            for r in replies
        ],
        [float(r.num_examples) for r in replies],
    )
    return ArrayRecord({name: Array(values) for name, values in averaged.items()})
