"""Settings that travel from `optwatch run` to the training process, as JSON in its environment.

Torch-free, so the CLI can build them without paying for `import torch`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

ENV_RUN_DIR = "OPTWATCH_RUN_DIR"
ENV_RUN_ID = "OPTWATCH_RUN_ID"
ENV_OPTIONS = "OPTWATCH_OPTIONS"
ENV_HUB = "OPTWATCH_HUB"  # HOST:PORT of rank 0's --listen address, for ranks on other nodes
ENV_TOKEN = "OPTWATCH_TOKEN"  # a token to use instead of a random one (multi-node jobs share it)


@dataclass
class ProbeOptions:
    """Settings that travel from `optwatch run` to the training process (as JSON in the environment)."""

    publish_interval_s: float = 0.25
    system_interval_s: float = 0.5
    script: str = ""
    argv: list[str] = field(default_factory=list)
    listen: str | None = None  # HOST:PORT for a token-protected TCP endpoint (rank 0)
    controls: list[str] = field(default_factory=list)  # COMMAND@STEP, applied at that step

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ProbeOptions:
        raw = os.environ.get(ENV_OPTIONS)
        if not raw:
            return cls(script=sys.argv[0] if sys.argv else "", argv=list(sys.argv[1:]))
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
