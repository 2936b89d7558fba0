"""The configs shipped with tfllm, run by name: `tfllm-train --config=shakespeare_lm`.

Installed as the subpackage `tfllm.configs`; `tfllm-train --list_configs` lists them. Each
module defines `get_config()` (some take one argument: `--config=distill_bert_tiny:ner`).
"""
