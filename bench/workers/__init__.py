"""Worker processes the benchmarks start (each reads JSON commands on stdin)."""
