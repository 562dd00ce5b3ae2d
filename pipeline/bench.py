"""`python -m pipeline.bench`: the benchmark (:mod:`pipeline.tools.bench`)."""

from pipeline.tools.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
