"""Job flow, storage and errors of the WorldPlay RunPod worker."""

__version__ = "0.1.0"
