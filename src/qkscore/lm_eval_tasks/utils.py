"""lm-eval resolves ``!function utils.NAME`` next to the task YAMLs; the code lives in qkscore."""

from qkscore.integrations.lm_eval_tasks import load_dataset

__all__ = ["load_dataset"]
