"""`pneumo predict`: score an archive of films offline with Ray Data, one output row per input file.

sources.py   DATA -> a table of (path, true_label): a folder at any depth, a manifest, an .npz; local or s3://, gs://
resume.py    the output folder's owner (which model) and the films it already holds
read.py      path -> bytes -> SHA-256 and the decoded film, in CPU tasks; a bad file is a row with its status
scorer.py    the actor that scores decoded films: runtime, calibration, out-of-distribution gate, Grad-CAM
score.py     the Ray Data pipeline from the listing to the scored rows
output.py    Parquet parts written whole, the CSV on request, summary.json
progress.py  the one updating line: done of total, films/s, ETA, refused and unreadable
predict.py   `predict_archive`: all of the above, the metrics when labels are known, the MLflow run
"""
