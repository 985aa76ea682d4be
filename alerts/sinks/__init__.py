"""Where alerts go from the worker: Redis (stream, active hash, lifecycle state) and Prometheus."""
