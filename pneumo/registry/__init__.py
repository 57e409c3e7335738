"""The model registry: a checkpoint becomes a registered MLflow version with its pyfunc flavour, its
card, its exports and an alias (register.py), and any model is found again by URI (uri.py).
Serving and scoring jobs only read from here."""
