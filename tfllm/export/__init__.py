"""SavedModel export for TF Serving: string-in signatures per task, warm-up records.

The public names below import their module on first use, so that the TF-free config schema
(`tfllm.export.config`) imports without TensorFlow (`tfllm.lazy_exports`).
"""

from tfllm.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "saved_model": ["ExportError", "existing_versions", "export_saved_model", "next_version"],
    "trained": ["export_model_dir", "load_trained"],
    "signatures": ["signatures_for"],
})
