"""The demo's one exception: the loop cannot go on, and the message says why."""


class DemoError(RuntimeError):
    """Nothing to train on, a stage failed, the gate refused: what was measured is still written."""
