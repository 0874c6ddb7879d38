"""The HTTP API: OpenAI-compatible routes, health, metrics, and the middleware around them."""
