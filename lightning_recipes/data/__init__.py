"""LightningDataModules: image folders and CSVs, scikit-learn digits, text datasets and corpora."""
