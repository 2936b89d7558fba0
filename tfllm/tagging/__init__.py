"""Tagging: the IOB2 scheme, tag decoding (Viterbi under IOB2 transitions) and entity spans.

Level 1 (docs/architecture.md): imports only `tfllm.config`; the model config, the metrics,
the tf.data pipelines and the serving signatures all read tags through this one package.
"""
