"""Where evaluation models run: one rule for the ASR backends and the model-based metrics."""
from __future__ import annotations

import torch

from s2s.config import ConfigError


def resolve_device(setting: str, key: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when visible) -> torch.device; asking for CUDA where none
    is visible is a ConfigError naming the setting `key` (e.g. "speaker.device")."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={setting} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={setting} but no CUDA device is visible; set {key}=cpu (or auto)")
    return device
