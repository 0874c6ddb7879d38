"""The stack's one validated config model (pydantic v2), read once from `pulumi.Config`.

AWS sections live in `aws.py`, Kubernetes sections in `kubernetes.py`; `load_stack_config()` reads them all and
raises `ConfigError` (one line naming the key and the fix) for a broken stack file.
"""

from stack.config.errors import ConfigError
from stack.config.loader import StackConfig, load_stack_config

__all__ = ["ConfigError", "StackConfig", "load_stack_config"]
