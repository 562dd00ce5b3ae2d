"""Developer tools outside the serving packages (benchmarks, tiny live runs): run from a checkout, never
on the serving path and not copied into the image. Tools that need only the model live in
``pipeline/tools/``; those here may import ``worker``, which ``pipeline`` never does."""
