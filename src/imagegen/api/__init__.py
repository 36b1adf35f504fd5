"""The HTTP edge: FastAPI routers over the service layer."""
