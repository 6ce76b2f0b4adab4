"""Orchestration on top of the ``simsc`` library: DVC stages, MLflow tracking, the report,
Ray Tune sweeps. Nothing in ``simsc`` imports this package."""
