"""The FastAPI app: create_app, its routers, the WebSocket hub, auth and errors."""
