"""Scoring jobs: a model scored on a dataset, logged as an MLflow run, with a report folder.
scoring.py is the skeleton every such job shares (`pneumo eval`, `pneumo monitor`, `pneumo predict`)."""
