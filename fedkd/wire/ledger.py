"""The release ledger: every key a client message carried in a run, and what protected it.

It is filled from the replies the server actually received (train, evaluate and query
replies), never from a list kept by hand: each key is looked up in the payload that owns it
(:mod:`fedkd.wire.payloads`), which says how the run's ``privacy`` mechanism protects it.
``summary.json`` reports it as ``privacy.releases``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict

from fedkd.privacy import PrivacySpec
from fedkd.wire import keys
from fedkd.wire.payloads import PAYLOADS, ModelWeights, Payload

#: Protection labels, from strongest to none.
PROTECTIONS = ("dp", "central_dp", "secure_aggregation", "public", "simulation_only", "none")
#: Keys that describe the federation, not anyone's data.
PUBLIC_KEYS = frozenset({keys.PARTITION_ID, keys.ARCHITECTURE, keys.SERVER_ROUND})


def owner(record: str, key: str) -> Payload | None:
    """The payload that owns ``key`` in the reply record ``record`` (None: no payload)."""
    if record == ModelWeights.record:
        return PAYLOADS[ModelWeights.name]
    return next((p for p in PAYLOADS.values() if p.record == record and key in p.keys), None)


def protection(message: str, record: str, key: str, privacy: PrivacySpec) -> str:
    """How ``key`` of a ``message`` reply is protected under ``privacy``."""
    if key in PUBLIC_KEYS:
        return "public"
    if message == "train":
        payload = owner(record, key)
        return "none" if payload is None else payload.protection(key, privacy)
    return "none"  # discovery counts and histograms, evaluation results: exact values


@dataclass
class ReleaseLedger:
    """``(message, key) -> protection`` for everything clients sent in a run.

    Parameters
    ----------
    privacy : PrivacySpec
        The run's privacy mechanism (it decides each payload's protection).
    """

    privacy: PrivacySpec
    _rows: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (message, record, key, simulation_only) already classified: replies repeat the same
    #: keys every round, so each is looked up once per run, not once per reply
    _seen: set[tuple[str, str, str, bool]] = field(default_factory=set)

    def record_replies(self, replies: Iterable[Message]) -> None:
        """Add every key of the replies that are not errors, under their message type."""
        for reply in replies:
            if not reply.has_error():
                self.record(reply.metadata.message_type, reply.content)

    def record(self, message: str, content: RecordDict, *, simulation_only: bool = False) -> None:
        """Add every key of one reply's ``content``. ``message`` names the exchange
        (``discovery``, ``train``, ``evaluate``, ``state-export``, ``audit-model``);
        ``simulation_only``: a message a deployment never sends (checkpoint state exports,
        the audit fetching client models). A key seen under two protections keeps the
        weaker one."""
        for record_name, record in content.items():
            whole = record_name == ModelWeights.record or record_name.startswith(keys.STATE_PREFIX)
            for key in ["*"] if whole else list(record.keys()):
                seen = (message, record_name, key, simulation_only)
                if seen in self._seen:
                    continue
                self._seen.add(seen)
                label = (
                    "simulation_only"
                    if simulation_only
                    else protection(message, record_name, key, self.privacy)
                )
                row = (message, f"{record_name}/{key}")
                previous = self._rows.get(row, label)
                self._rows[row] = max(previous, label, key=PROTECTIONS.index)

    def entries(self) -> list[dict[str, str]]:
        """The ledger as ``{message, key, protection}`` rows, sorted by message and key."""
        return [
            {"message": message, "key": key, "protection": label}
            for (message, key), label in sorted(self._rows.items())
        ]
