"""The bundled demo: a sandboxed file-operations tool set, a scripted agent, and the loop that makes a specialist better."""
