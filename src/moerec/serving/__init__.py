"""The HTTP service: FastAPI app factory, routes, auth, rate limits, cache and metrics."""
