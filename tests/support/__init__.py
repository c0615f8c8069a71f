"""Helpers only the tests use: the in-memory mesh simulator, the teardown leak check, the CLI runner, the
zeroconf lab. The rigs benchmarks share with the tests (brokers, agents, namespaces, speech, fuzzing) live
in ``benchmarks/rigs`` and ``benchmarks/fuzzing``."""
