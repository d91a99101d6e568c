"""Routing API: FastAPI app factory, routers and error mapping."""
