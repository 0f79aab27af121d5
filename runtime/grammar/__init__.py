"""Grammar-constrained decoding: JSON schemas and tool calls compiled to token masks."""
