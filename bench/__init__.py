"""Couchfarm benchmarks (issue 9): ``make bench`` runs :mod:`bench.run`; see docs/BENCHMARKS.md."""
