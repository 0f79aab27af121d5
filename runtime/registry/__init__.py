"""Specialist packages and registries: build, publish, index, pull with sha256 verification, watch for new versions."""
