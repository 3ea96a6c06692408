"""Teacher access: in-process models, top-k log-probs and samples, caches, API client/server."""
