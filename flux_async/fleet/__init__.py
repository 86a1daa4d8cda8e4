"""Many processes and machines sharing one account through Redis: the shared ledger.
It needs the optional ``redis`` extra (``pip install "flux-async[redis]"``): importing this
package without it raises ImportError saying so; ``import flux_async`` never imports it.
It must not import the session.
"""

from ._ledger import RedisLedger, RedisLedgerStatistics

__all__ = ["RedisLedger", "RedisLedgerStatistics"]
