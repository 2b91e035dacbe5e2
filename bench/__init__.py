"""Benchmarks behind ``make bench``: real servers on loopback, in-process comparisons, a report."""
