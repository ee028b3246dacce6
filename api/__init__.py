"""The HTTP API (FastAPI) over the kb core: see api.app.create_app."""
