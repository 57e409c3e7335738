"""Serving: the Ray Serve app and its typed builder, request inputs, the background model loader and
the MLflow pyfunc flavour. Only app.py and builder.py import Ray Serve."""
