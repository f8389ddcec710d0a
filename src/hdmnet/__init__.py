"""HDMNet: hierarchical dense correlation distillation for few-shot segmentation, reproduced."""

__version__ = "0.1.0"
