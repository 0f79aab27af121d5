"""Environments that ship with TinyGPT, written against the public interface as a user would."""
