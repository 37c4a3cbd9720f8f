"""Hydra launcher that runs each job of a sweep as a task on a Ray cluster (fedkd)."""
