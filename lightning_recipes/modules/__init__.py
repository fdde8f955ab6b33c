"""LightningModules: one file per task family, sharing the backbone/head contract of ``_base``."""
