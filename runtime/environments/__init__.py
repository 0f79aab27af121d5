"""Environments: a user's tools, tasks and checker, which the factory trains on.

Implement `Environment` in your own module, name it in `tinygpt.project.json`
(`"environments": [{"name": "shop", "entry": "my_pkg.shop:ShopEnv"}]`), then
`tinygpt env check shop` and `tinygpt env run shop`. See `interface.py`.
"""

from tinygpt.runtime.contracts.environments import EnvTask, Reward, ToolCallRecord, Transcript

from .interface import Environment, tool

__all__ = ["EnvTask", "Environment", "Reward", "ToolCallRecord", "Transcript", "tool"]
