"""`python -m pipeline`: the demo CLI (:mod:`pipeline.tools.demo`)."""

from pipeline.tools.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
