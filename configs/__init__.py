"""Experiment configs: one get_config() per file; variants import `base` and override fields."""
