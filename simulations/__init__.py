"""Entry points (Hydra) and the simulation-engine glue."""
