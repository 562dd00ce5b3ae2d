"""Developer tools, apart from the serving path: tiny random-weight fixtures, benchmark, demo CLI."""
