"""The release ledger: every key a client message carried in a run, and what protected it.

It is filled from the replies the server actually received (train, evaluate and query
replies), never from a list kept by hand: each key is looked up in the payload that owns it
(:mod:`fedkd.wire.payloads`), which says how the run's ``privacy`` mechanism protects it.
``summary.json`` reports it as ``privacy.releases``.

The same classification is enforced on the client: under a privacy mechanism,
:func:`withhold` drops every key whose protection is ``none`` from a reply before it is
sent, unless ``privacy.allow_unprotected`` names it (:func:`check_allowed` refuses names no
client ever sends). Such allowed rows are marked ``allowed: true`` in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict

from fedkd.errors import ConfigError
from fedkd.privacy import PrivacySpec
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads import PAYLOADS, ModelWeights, Payload

#: Protection labels, from strongest to none.
PROTECTIONS = ("dp", "central_dp", "secure_aggregation", "public", "simulation_only", "none")
#: Keys that describe the federation, not anyone's data.
PUBLIC_KEYS = frozenset({keys.PARTITION_ID, keys.ARCHITECTURE, keys.SERVER_ROUND})
#: Keys of the discovery answer and of the evaluation reply (not payloads).
DISCOVERY_KEYS = (keys.PARTITION_ID, keys.NUM_EXAMPLES, keys.LABEL_HISTOGRAM, keys.ARCHITECTURE)
EVALUATE_KEYS = (keys.NUM_EXAMPLES, keys.ACCURACY, keys.LOSS)


def known_keys() -> frozenset[str]:
    """Every key a client reply can carry (what ``privacy.allow_unprotected`` may name)."""
    names = {key for payload in PAYLOADS.values() for key in payload.keys}
    return frozenset(names | set(DISCOVERY_KEYS) | set(EVALUATE_KEYS))


def check_allowed(privacy: PrivacySpec) -> None:
    """Refuse ``privacy.allow_unprotected`` entries that name no key a client sends."""
    unknown = sorted(set(privacy.allow_unprotected) - known_keys())
    if unknown:
        raise ConfigError(
            f"privacy.allow_unprotected names {unknown}, which no client sends; "
            f"known keys: {sorted(known_keys())}"
        )


def owner(record: str, key: str) -> Payload | None:
    """The payload that owns ``key`` in the reply record ``record`` (None: no payload)."""
    if record == ModelWeights.record:
        return PAYLOADS[ModelWeights.name]
    return next((p for p in PAYLOADS.values() if p.record == record and key in p.keys), None)


def protection(message: str, record: str, key: str, privacy: PrivacySpec) -> str:
    """How ``key`` of a ``message`` reply is protected under ``privacy``."""
    if key in PUBLIC_KEYS:
        return "public"
    if record == secagg_records.SECAGG:  # the secure-aggregation protocol's own messages
        return secagg_records.REPLY_KEYS.get(key, "none")
    if key == keys.NUM_EXAMPLES and privacy.enabled and message in ("discovery", "train"):
        return "public"  # a public bound under a mechanism (fedkd.privacy.public_examples)
    if key == keys.DP_EPSILON and privacy.name == "dpsgd":
        return "public"  # a function of the public sampling schedule
    if message == "train":
        payload = owner(record, key)
        return "none" if payload is None else payload.protection(key, privacy)
    return "none"  # discovery histograms, evaluation results: exact values


def withhold(message: str, content: RecordDict, privacy: PrivacySpec) -> list[str]:
    """Remove from ``content`` every key a client may not send under ``privacy`` (protection
    ``none`` and not in ``privacy.allow_unprotected``); returns their names. Without a
    mechanism nothing is removed."""
    if not privacy.enabled:
        return []
    removed = []
    for record_name, record in list(content.items()):
        if record_name == ModelWeights.record or record_name.startswith(keys.STATE_PREFIX):
            continue  # whole state dicts: the payload's own protection applies
        for key in list(record.keys()):
            label = protection(message, record_name, key, privacy)
            if label == "none" and not privacy.sends_unprotected(key):
                del record[key]
                removed.append(key)
        if not record.keys():
            del content[record_name]
    return removed


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

    def entries(self) -> list[dict[str, str | bool]]:
        """The ledger as ``{message, key, protection}`` rows, sorted by message and key;
        under a mechanism, a ``none`` row the user allowed has ``allowed: true``."""
        rows: list[dict[str, str | bool]] = []
        for (message, key), label in sorted(self._rows.items()):
            row: dict[str, str | bool] = {"message": message, "key": key, "protection": label}
            if label == "none" and self.privacy.enabled:
                row["allowed"] = key.rsplit("/", 1)[-1] in self.privacy.allow_unprotected
            rows.append(row)
        return rows

    def unprotected(self) -> list[str]:
        """``message:key`` of every row sent without protection under a mechanism."""
        if not self.privacy.enabled:
            return []
        return [
            f"{message}:{key}"
            for (message, key), label in sorted(self._rows.items())
            if label == "none"
        ]
