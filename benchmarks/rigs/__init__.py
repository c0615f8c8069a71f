"""Rigs: the real parts a benchmark or a test starts — Mosquitto on a free loopback port, provisioned
households and agents, network namespaces with capped links, a headless Home Assistant, synthesized
speech and the ISA probes.

They live with the benchmarks because a benchmark must run from a checkout without the test tree
(``tests/layers.py``: benchmarks never import tests); the tests and the Home Assistant end-to-end suite
borrow them from here. Test-only helpers (the in-memory mesh simulator, the teardown leak check, the CLI
runner) stay in ``tests/support``.
"""
