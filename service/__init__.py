"""The adapterd HTTP API (FastAPI); never imports torch, transformers or worker."""
