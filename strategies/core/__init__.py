"""The strategy core: transport, reply validation, bookkeeping and server distillation."""
