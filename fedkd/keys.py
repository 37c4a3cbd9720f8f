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
SHARE_WEIGHTS = "share-weights"
SHARE_PROXY_PROBS = "share-proxy-probs"
SHARE_TEST_PROBS = "share-test-probs"
TRAIN_SEED = "train-seed"

# ArrayRecord keys
PROXY_PROBS = "proxy-probs"
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
