"""Stand-in for vllm.benchmarks (tests only)."""
