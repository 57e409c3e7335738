"""Monitoring: what the served model sees, compared with what it was trained and validated on.

features.py  pre-logit features, intensity statistics and probabilities of images (never pixels)
profile.py   the reference profile stored with the checkpoint (PCA of features + a bounded sample)
ood.py       the out-of-distribution gate: a score per image and the cut-off fitted on val
drift.py     a bounded window of recent observations and the drift tests against the profile
report.py    `pneumo monitor MODEL DATA`: the drift report for a dataset, as HTML and an MLflow run
"""
