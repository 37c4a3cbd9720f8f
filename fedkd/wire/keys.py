"""Message keys shared by the ClientApp and the server strategies (kebab-case, as in Flower)."""

# RecordDict entries
ARRAYS = "arrays"  # ArrayRecord: model weights (server -> client, client -> server)
CONFIG = "config"  # ConfigRecord: round settings (server -> client)
METRICS = "metrics"  # MetricRecord: client statistics (client -> server)
PREDICTIONS = "predictions"  # ArrayRecord: what a client shares about the proxy (counted uplink)
EVALUATION = "evaluation"  # ArrayRecord: evaluation-only outputs (not part of the method's uplink)

# ConfigRecord keys
SERVER_ROUND = "server-round"
SETUP = "fedkd-setup"  # JSON: dataset, partition, model, training settings (see fedkd.setup)
PAYLOADS = "payloads"  # round config: the payload names a client computes (fedkd.wire.payloads)
TRAIN_SEED = "train-seed"

# ArrayRecord keys
PROXY_PROBS = "proxy-probs"  # (rows, classes): uplink (fedkd.wire.encoding), targets
PROXY_PROBS_Q = "proxy-probs-q"  # int8 encoding: (rows, classes) quantized values
PROXY_PROBS_SCALE = "proxy-probs-scale"  # int8 encoding: (rows,) float32 step per row
PROXY_PROBS_IDX = "proxy-probs-idx"  # topk encoding: (rows, k) class indices
PROXY_PROBS_VAL = "proxy-probs-val"  # topk encoding: (rows, k) float16 values
TEST_PROBS = "test-probs"

# MetricRecord keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
PARTITION_ID = "partition-id"
LABEL_HISTOGRAM = "label-histogram"
ACCURACY = "accuracy"
LOSS = "loss"

# Node config keys (simulation: set by Flower; deployment: set with --node-config)
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"

# --- methods where clients keep their own models (FedMD, DS-FL, FD, local-only) ---
TARGETS = "targets"  # ArrayRecord: server -> client targets to digest
KEEP_MODEL = "keep-model"  # client restores/saves its model in context.state
STATE_MODEL = "fedkd-model"  # context.state key of a client's own model
PROXY_ROUND_SIZE = "proxy-round-size"  # proxy examples scored per round (0: all)
TARGETS_ROUND = "targets-round"  # the round whose proxy subset the targets refer to
DIGEST_EPOCHS = "digest-epochs"
DIGEST_LR = "digest-lr"
DIGEST_BATCH_SIZE = "digest-batch-size"
DIGEST_TEMPERATURE = "digest-temperature"
DIGEST_SOFT_LOSS = "digest-soft-loss"
DIGEST_OPTIMIZER = "digest-optimizer"
DIGEST_MOMENTUM = "digest-momentum"
WARMUP_PUBLIC_EPOCHS = "warmup-public-epochs"  # FedMD transfer learning on the labeled proxy
LOCAL_EPOCHS = "local-epochs"  # overrides client.epochs for this round when present
# FD (Jeong et al. 2018): per-label logit sharing
FD_BETA = "fd-beta"
FD_TEMPERATURE = "fd-temperature"
LABEL_LOGITS = "label-logits"  # (C, C) mean logits per true label
LABEL_COUNTS = "label-counts"  # (C,) examples per label
# extra reply metrics
LOCAL_ACCURACY = "local-accuracy"  # the client's model on its own local test split
ARCHITECTURE = "architecture"  # index into the run's client architectures
# FedProto (Tan et al. 2022) / FedHKD (Chen et al. 2023): per-class prototypes of private data
PROTOTYPES = "prototypes"  # (C, D) mean embedding per class
PROTOTYPE_SOFT = "prototype-soft"  # (C, C) mean softmax output per class
PROTOTYPE_COUNTS = "prototype-counts"  # (C,) examples per class
PROTO_WEIGHT = "proto-weight"
PROTO_SOFT_WEIGHT = "proto-soft-weight"
PROTO_TEMPERATURE = "proto-temperature"
PROXIMAL_MU = "proximal-mu"  # FedProx (Li et al. 2020): mu of the proximal term, as Flower
# SCAFFOLD (Karimireddy et al. 2020; fedkd.wire.payloads.control)
CONTROL = "control"  # ArrayRecord: a reply's control-variate update (client -> server)
SERVER_CONTROL = "server-control"  # targets entry: the server control c, flat (server -> client)
CONTROL_DELTA = "control-delta"  # control entry: the client's Delta c_i, flat
STATE_CONTROL = "fedkd-control"  # context.state: the client's control c_i
STATE_CONTROL_DELTA = "fedkd-control-delta"  # context.state: this round's Delta c_i (until sent)
# Privacy (fedkd.privacy)
DP_HISTORY = "fedkd-dp-history"  # context.state: the client's Opacus accountant history
DP_EPSILON = "dp-epsilon"  # reply metric: the client's own Opacus epsilon after training
TARGETS_ROWS = "targets-rows"  # rows of the round's proxy subset the targets cover (PATE)
AUDIT_MODEL = "audit-model"  # query config: reply with the client's own model (audit only)
# Reliability (fedkd.reliability.faults, fedkd.reliability.attacks, checkpoints)
FAULT = "fault"  # round config: crash | straggle | kill (fault injection, simulation only)
FAULT_DELAY = "fault-delay"  # round config: seconds a straggler sleeps
ATTACK_KIND = "attack-kind"  # round config: the poisoning a malicious client applies
ATTACK_SCALE = "attack-scale"  # round config: factor of the scale attack
ATTACK_TARGET = "attack-target"  # round config: the class the targeted attack pushes
STATE_EXPORT = "state-export"  # query config: reply with every context.state record
STATE_IMPORT = "state-import"  # query config: replace context.state with the sent records
STATE_PREFIX = "state/"  # RecordDict key prefix of context.state records in those queries
# A train reply's metrics echo SERVER_ROUND, so a reply never counts in another round.
