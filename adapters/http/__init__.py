"""The HTTP adapter (contract section 7): ``adapter`` builds the FastAPI app and serves it;
``routes_*`` hold the routes by family, ``schemas`` their OpenAPI models, ``routes_guard``
the contract's error bodies and API key."""


def __getattr__(name: str) -> object:
    """``uvicorn adapters.http:app`` (the seeds' deployment) keeps working: the standalone
    app is built on first access, never at import."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import adapters.http.adapter as adapter

    return adapter.app
