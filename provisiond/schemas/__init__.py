"""API schemas (pydantic), shared by the routers, the use cases and the client."""
