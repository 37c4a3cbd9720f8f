"""A client's side of secure aggregation (``secagg``): the protocol's stages and the masked
reply.

The server opens a session per round with two ``query`` stages (``advertise``: fresh key
pairs, ``share``: encrypted Shamir shares for the neighbours), sends the routed shares with
the ``train`` message, and after the replies asks the survivors to ``unmask``. Between
messages the client's :class:`~fedkd.privacy.secagg.SecAggClient` (its private keys and
the shares it holds) lives in ``context.state`` under :data:`STATE`, bound to the session;
checkpoint exports never include it, and it is deleted once the client answered the unmask
request, so a second request in the same session finds nothing to reveal.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedkd.privacy.secagg import ProtocolError, SecAggClient
from fedkd.wire import keys, secagg_records
from fedkd.wire.payloads import metric
from fedkd.wire.payloads.secure_sum import MASKED, client_arrays, masked_record_values, pack
from fedkd.wire.secagg_records import RoundParams

if TYPE_CHECKING:
    from fedkd.apps.client import TrainJob
    from fedkd.apps.runtime import ClientRuntime

#: context.state entry (ConfigRecord): the pickled client and the session's parameters.
STATE = "fedkd-secagg"
_CLIENT, _PARAMS = "client", "params"


def answer(stage: str, message: Message, context: Context, runtime: ClientRuntime) -> RecordDict:
    """The reply content to a secure-aggregation query of ``stage``."""
    config = message.content.config_records[keys.CONFIG]
    if stage == secagg_records.ADVERTISE:
        params = RoundParams.from_config(config)
        client = SecAggClient(runtime.partition_id, params.params)
        record = secagg_records.advertise_record(client.advertise_keys())
        _save(context, client, params)
    elif stage == secagg_records.SHARE:
        client, params = _load(context, config.get(secagg_records.SESSION))
        bundle = client.share_keys(secagg_records.broadcast_from(message.content))
        record = secagg_records.shares_record(bundle)
        _save(context, client, params)
    elif stage == secagg_records.UNMASK:
        client, _ = _load(context, config.get(secagg_records.SESSION))
        reply = client.unmask(secagg_records.request_from(message.content))
        record = secagg_records.unmask_record(reply)
        del context.state[STATE]  # answered once: nothing more to reveal in this session
    else:
        raise ProtocolError(f"unknown secure-aggregation stage {stage!r}")
    identity = MetricRecord({keys.PARTITION_ID: runtime.partition_id})
    return RecordDict({secagg_records.SECAGG: record, keys.METRICS: identity})


def mask_reply(job: TrainJob, content: RecordDict) -> None:
    """Replace the reply's summable payloads by the masked sum, when the train message
    belongs to a secure-aggregation session (it carries ``secagg-session``)."""
    config = job.message.content.config_records[keys.CONFIG]
    session = config.get(secagg_records.SESSION)
    if session is None:
        return
    client, params = _load(job.context, session)
    taken = client_arrays(content, job.payloads)
    reported = metric(dict(content.metric_records[keys.METRICS]), keys.NUM_EXAMPLES)
    weight = float(reported) if params.rule.size_weighted else 1.0
    vector = pack(params.layout, job.payloads, taken, params.rule, weight=weight, client=job.client)
    routed = secagg_records.routed_from(job.message.content, job.runtime.partition_id)
    masked = client.masked_input(vector, routed).masked
    bits = params.params.encoding.modulus_bits
    for key, values in masked_record_values(masked, params.layout, bits).items():
        record_name = keys.PREDICTIONS if key == MASKED else keys.EVALUATION
        if record_name not in content.array_records:
            content[record_name] = ArrayRecord()
        content.array_records[record_name][key] = Array(values)
    _save(job.context, client, params)


def _save(context: Context, client: SecAggClient, params: RoundParams) -> None:
    context.state[STATE] = ConfigRecord(
        {_CLIENT: pickle.dumps(client), _PARAMS: pickle.dumps(params)}
    )


def _load(context: Context, session: object) -> tuple[SecAggClient, RoundParams]:
    """The session's client and parameters; ``ProtocolError`` when this client holds no
    session or another one (a stale or replayed message)."""
    record = context.state.config_records.get(STATE)
    if record is None:
        raise ProtocolError("no secure-aggregation session on this client")
    params: RoundParams = pickle.loads(_bytes(record[_PARAMS]))
    if not isinstance(session, bytes) or session != params.params.session:
        raise ProtocolError("the message belongs to another secure-aggregation session")
    client: SecAggClient = pickle.loads(_bytes(record[_CLIENT]))
    return client, params


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError("the secure-aggregation state on this client is corrupt")
    return value
