"""Flower apps: the ClientApp and the ServerApp (each a module-level ``app``)."""
