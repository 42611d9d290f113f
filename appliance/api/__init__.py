"""The OpenAI-compatible HTTP API and its error shape."""
