"""The REST API (FastAPI): app factory, thin routers, request/response schemas."""

from provisiond.api.app import create_app

__all__ = ["create_app"]
