"""Benchmarking: inference throughput, FLOPs/sec, peak and tuning."""
