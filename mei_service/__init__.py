"""mei-service: the control plane that runs MEI generation on GPU workers.

In a notebook, ``from mei_service import enqueue, follow, status, errors, retry, cancel, gallery``; on the command
line, ``mei-service --help``.
"""

from typing import Any

from mei_service.local import apply_local_defaults

# Every process of the project imports this package first: all of them get the same local defaults.
apply_local_defaults()

__all__ = ["cancel", "enqueue", "errors", "follow", "gallery", "retry", "status"]


def __getattr__(name: str) -> Any:
    # Imported on first use: DataJoint reads its environment when first imported, which must not happen
    # merely because a submodule such as mei_service.local was imported.
    if name == "gallery":
        from mei_service.galleries import gallery

        return gallery
    if name in __all__:
        from mei_service import client

        return getattr(client, name)
    raise AttributeError(f"module 'mei_service' has no attribute {name!r}")
