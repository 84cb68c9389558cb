"""The run's settings: :class:`~onnxprune.config.settings.PruneConfig` (one frozen object every
stage reads, validated once) and the settings file that fills it (``file.py``)."""
