"""A run's outputs and control: run directory, reports, progress, checkpoints, export,
compression comparison, and stop requests."""
