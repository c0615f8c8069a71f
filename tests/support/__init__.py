"""Fixtures shared by tests and benchmarks: real brokers, provisioned households, agents on the mesh, network
namespaces, and the in-memory mesh simulator. Lives with the tests; benchmarks run from a checkout and
reuse it."""
