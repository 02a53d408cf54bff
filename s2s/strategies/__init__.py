"""The strategy registry: a plain mapping from name to strategy class.

Adding a strategy: write `s2s/strategies/<name>.py` (a `Strategy` subclass with its `Config`
dataclass) and add one line below.
"""
from s2s.strategies.adapter_stage1 import AdapterStage1
from s2s.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {
    AdapterStage1.name: AdapterStage1,
}
