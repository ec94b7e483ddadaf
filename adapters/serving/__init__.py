"""``infer-os serve``: the real executors behind an OpenAI-compatible HTTP API
(the ``[serve]`` extra)."""
