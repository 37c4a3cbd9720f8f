"""The reliability harness (simulation only): injected client faults and poisoning attacks."""
