"""Proof that the system works and how fast: the demo, the benchmarks, the fault-injection suite."""
