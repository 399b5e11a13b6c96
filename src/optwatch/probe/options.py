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


@dataclass
class ProbeOptions:
    """Settings that travel from `optwatch run` to the training process (as JSON in the environment)."""

    publish_interval_s: float = 0.25
    system_interval_s: float = 0.5
    script: str = ""
    argv: list[str] = field(default_factory=list)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ProbeOptions:
        raw = os.environ.get(ENV_OPTIONS)
        if not raw:
            return cls(script=sys.argv[0] if sys.argv else "", argv=list(sys.argv[1:]))
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
