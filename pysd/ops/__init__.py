"""Public ops.  Each module validates its inputs, picks a backend through
``pysd._backend`` and registers a ``torch.library`` custom op."""
