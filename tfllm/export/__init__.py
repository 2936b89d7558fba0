"""SavedModel export for TF Serving: string-in signatures per task, warm-up records."""

from tfllm.export.saved_model import (ExportError, existing_versions, export_model_dir,
                                      export_saved_model, load_trained, next_version)
from tfllm.export.signatures import signatures_for

__all__ = [
    "ExportError", "existing_versions", "export_model_dir", "export_saved_model",
    "load_trained", "next_version", "signatures_for",
]
