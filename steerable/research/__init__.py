"""The research workflow (the ``eval`` extra for plots and the sentiment judge): A/B data and its letter
confound, pair files, shipped datasets, evaluation, sweeps with intervals, diagnostics, and statistics
that can be undefined."""
