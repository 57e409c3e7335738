"""Scoring a trained model: metrics, calibration, predictions, the `pneumo eval` run and its report.

metrics.py and calibration.py import only numpy/scipy/scikit-learn: training (val AUROC) and
checkpoints (the stored calibration) use them too, so they stay leaf modules.
"""
