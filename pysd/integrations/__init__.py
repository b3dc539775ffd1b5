"""Optional integrations with other libraries; each submodule imports its library when imported.

* :mod:`pysd.integrations.transformers`: knowledge distillation inside a Hugging Face ``Trainer``.
"""
