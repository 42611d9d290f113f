"""The threat model of the gate: the corpus, the fuzz targets and the runner (see README.md)."""
