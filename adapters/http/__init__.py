"""The HTTP adapter (contract section 7): ``adapter`` builds the FastAPI app and serves it;
``routes_*`` hold the routes by family, ``schemas`` their OpenAPI models, ``routes_guard``
the contract's error bodies and API key."""
