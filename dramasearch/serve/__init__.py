"""`dramasearch serve`: an HTTP JSON API over an index (FastAPI + uvicorn), with micro-batching."""
from .app import create_app
from .service import SearchService, ServeSettings

__all__ = ["SearchService", "ServeSettings", "create_app"]
