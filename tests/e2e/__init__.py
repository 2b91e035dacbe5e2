"""End-to-end tests: the service as operators run it, as real processes on loopback ports."""
