"""Developer tools that drive the worker (``worker/``) itself: benchmarks and checks run from a
checkout, never on the serving path and not copied into the image. Tools that need only the model
live in ``pipeline/tools/``; those here may import ``worker``, which ``pipeline`` never does."""
