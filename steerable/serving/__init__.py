"""Serving steered models on vLLM: a ``vllm.general_plugins`` plugin (nothing forked, no vLLM file edited).

Requests carry their steering in ``SamplingParams.extra_args["steering"]`` (offline) or
``"vllm_xargs": {"steering": "<JSON>"}`` (the OpenAI-compatible server); see docs/serving.md.

- :mod:`.versions`: the vLLM releases this plugin supports (any other fails at start).
- :mod:`.spec`: the request contract, parsed and checked (no vLLM import).
- :mod:`.catalog`: where vector names and paths are found, and loading vector files once.
- :mod:`.tables`: the fixed-size per-layer steering tables and the math applied to each layer's output.
- :mod:`.worker`: the model-runner side: wraps the decoder layers, writes the per-token slots each step.
- :mod:`.frontend`: the request side: rejects bad steering, puts the steering into the prefix-cache key.
- :mod:`.plugin`: ``register()``, the entry point vLLM calls in every process.
- :mod:`.server`: ``steerable serve MODEL --vectors DIR``.
"""
