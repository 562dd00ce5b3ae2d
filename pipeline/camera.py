"""`python -m pipeline.camera --plot SPEC out.png`: the camera path plot (:mod:`pipeline.tools.camera_plot`)."""

from pipeline.tools.camera_plot import main

if __name__ == "__main__":
    raise SystemExit(main())
