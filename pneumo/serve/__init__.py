"""Serving: the Ray Serve app and its typed builder, request inputs, the background model loader, the
served versions, monitoring and the page. Serving only reads models: registering them is
pneumo/registry/'s job."""
