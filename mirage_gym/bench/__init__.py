"""Benchmarks behind `mirage-gym bench`: each prints its figures and can write JSON."""
