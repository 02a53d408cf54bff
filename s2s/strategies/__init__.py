"""The strategy registry: a plain mapping from name to strategy class.

Adding a strategy: write `s2s/strategies/<name>.py` (a `Strategy` subclass with its `Config`
dataclass) and add one line below.
"""
from s2s.strategies.adapter_stage1 import AdapterStage1
from s2s.strategies.base import Strategy
from s2s.strategies.gatefusion_stage2 import GateFusionStage2
from s2s.strategies.istlm_interleaved import IstlmInterleaved

STRATEGIES: dict[str, type[Strategy]] = {
    AdapterStage1.name: AdapterStage1,
    IstlmInterleaved.name: IstlmInterleaved,
    GateFusionStage2.name: GateFusionStage2,
}
