"""Hydra launcher that runs the jobs of a sweep side by side in worker processes (fedkd)."""
