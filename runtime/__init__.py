"""TinyGPT runtime: the OpenAI-compatible server, the `tinygpt` command and the shared contracts."""
