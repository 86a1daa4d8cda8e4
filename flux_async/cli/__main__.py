"""``python -m flux_async.cli``: the same as the ``flux-async`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
