"""Client metrics: the example count, training loss and identity every train reply carries."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from flwr.app import RecordDict

from fedkd.privacy.config import PrivacySpec, public_examples
from fedkd.train import evaluate
from fedkd.wire import keys
from fedkd.wire.payloads.base import MAX_LOSS, ClientRound, Expectation, Payload
from fedkd.wire.payloads.registry import register

#: Keys every train reply carries whatever the privacy mechanism (public values).
ALWAYS_SENT = (keys.NUM_EXAMPLES, keys.PARTITION_ID, keys.ARCHITECTURE, keys.SERVER_ROUND)
#: Optional metrics: (key, upper bound) (withheld under a privacy mechanism, or not measured).
OPTIONAL_METRICS = (
    (keys.TRAIN_LOSS, MAX_LOSS),
    (keys.LOCAL_ACCURACY, 1.0),
    (keys.DP_EPSILON, None),
)


@register
class ClientMetrics(Payload):
    """The reply's ``metrics`` record: ``num-examples`` (the weight of the client in every
    example-weighted average), ``train-loss``, ``partition-id``, ``architecture``, the
    echoed ``server-round``, ``dp-epsilon`` (DP-SGD: the client's own Opacus accountant)
    and ``local-accuracy`` (its model on its own local test split).

    Every strategy receives it; it is validated first, since the other payloads' checks
    use the example count it reports. A count above what the client declared at discovery
    is a lie that would buy it weight, and is rejected.
    """

    name: ClassVar[str] = "client-metrics"
    order: ClassVar[int] = 0
    record: ClassVar[str] = keys.METRICS
    keys: ClassVar[tuple[str, ...]] = (
        keys.NUM_EXAMPLES,
        keys.TRAIN_LOSS,
        keys.PARTITION_ID,
        keys.ARCHITECTURE,
        keys.SERVER_ROUND,
        keys.DP_EPSILON,
        keys.LOCAL_ACCURACY,
    )
    counted: ClassVar[bool] = False  # MetricRecords are not counted as uplink bytes

    def compute(self, client: ClientRound) -> dict[str, Any]:
        """The metric values (after local training)."""
        metrics: dict[str, Any] = {
            keys.NUM_EXAMPLES: public_examples(
                client.privacy, len(client.client_data.train_y), client.setup.local.batch_size
            ),
            keys.PARTITION_ID: client.partition_id,
            keys.ARCHITECTURE: client.architecture,
            keys.SERVER_ROUND: client.server_round,  # the server rejects other rounds' replies
        }
        if math.isfinite(client.train_loss):  # NaN: nothing trained this round (no epochs)
            metrics[keys.TRAIN_LOSS] = float(client.train_loss)
        if client.dp_epsilon is not None:
            metrics[keys.DP_EPSILON] = float(client.dp_epsilon)
        test = client.client_data
        # skip the evaluation when withhold() would drop its result anyway
        if len(test.test_y) and client.privacy.sends_unprotected(keys.LOCAL_ACCURACY):
            _, metrics[keys.LOCAL_ACCURACY] = evaluate(
                client.model, test.test_x, test.test_y, device=client.device
            )
        return client.poison.reply(self, metrics, client)

    def leaves(self, key: str, privacy: PrivacySpec) -> bool:
        """Identity and the example count always leave (public values under a mechanism),
        DP-SGD's epsilon under ``dpsgd``; the other metrics only when allowed."""
        public = key in ALWAYS_SENT or (key == keys.DP_EPSILON and privacy.name == "dpsgd")
        return public or privacy.sends_unprotected(key)

    def validate(self, content: RecordDict, expect: Expectation) -> str | None:
        """Present, for this round, with a plausible example count and numeric metrics
        (``train-loss`` finite in [0, MAX_LOSS], ``local-accuracy`` in [0, 1], ``dp-epsilon``
        finite and >= 0, each when sent)."""
        if keys.METRICS not in content.metric_records:
            return "missing metrics"
        metrics = content.metric_records[keys.METRICS]
        echoed = metrics.get(keys.SERVER_ROUND)
        if not isinstance(echoed, int) or isinstance(echoed, bool):
            return "missing server-round"
        if echoed != expect.server_round:
            return "reply for another round"
        num_examples = metrics.get(keys.NUM_EXAMPLES)
        if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
            return "implausible num-examples"
        if expect.declared_examples and num_examples > expect.declared_examples:
            return "implausible num-examples"
        for key, upper in OPTIONAL_METRICS:
            value = metrics.get(key)
            if value is None:
                continue  # optional: withheld under a privacy mechanism, or not measured
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{key}: missing or not a number"
            if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
                bound = f"[0, {upper:g}]" if upper is not None else "finite and >= 0"
                return f"{key}: out of range (must be {bound})"
        return None

    def decode(self, content: RecordDict, expect: Expectation) -> dict[str, Any]:
        """The metric values, keyed by message key."""
        return dict(content.metric_records[keys.METRICS])

    def uplink_bytes(self, content: RecordDict) -> int:
        """Metrics are not counted (only ArrayRecords are, as Flower serializes them)."""
        return 0


def metric(values: dict[str, Any], key: str) -> float:
    """A numeric metric of a decoded :class:`ClientMetrics` value."""
    value = values[key]
    if not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number")
    return float(value)
