"""Model files on disk: resolution (local folder, RunPod cache, Hugging Face cache, download), verification, bundle."""
