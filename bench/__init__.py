"""Benchmarks (`make bench`). Each prints its figures next to a baseline measured in the same run."""
