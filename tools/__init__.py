"""Developer tools outside the serving packages (benchmarks)."""
