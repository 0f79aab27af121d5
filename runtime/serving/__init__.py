"""The OpenAI-compatible server: engine (one model thread), HTTP, recorder, adapters."""
