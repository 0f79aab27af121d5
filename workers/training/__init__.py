"""Training internals behind workers/finetune.py: data loading, losses, the loop."""
