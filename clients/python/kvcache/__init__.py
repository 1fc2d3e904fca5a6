"""kvcache: a client for the kvcache HTTP key-value cache.

    import kvcache
    cache = kvcache.Cluster(["http://10.0.0.1:7171", "http://10.0.0.2:7171"])
    cache.put("user:42", "alice", ttl=300); cache.get("user:42")   # -> "alice"

Client talks to one node (or to HAProxy in front of several); Cluster sends
each key straight to its node, on the ring of deploy/haproxy/haproxy.cfg.
"""

from .breaker import BreakerPolicy
from .client import Client
from .cluster import Cluster
from .errors import (BadRequest, EmptyKey, InvalidKey, InvalidTTL, InvalidValue, KeyNotAscii, KeyTooLong,
                     KvcacheError, NotAscii, NotFound, Overloaded, PayloadTooLarge, ServerError, SnapshotInProgress,
                     Timeout, TooManyItems, Unauthorized, Unavailable, ValueNotAscii, ValueTooLong)
from .ring import Ring

__version__ = "0.1.0"
__all__ = ["Client", "Cluster", "Ring", "BreakerPolicy", "KvcacheError", "BadRequest", "InvalidKey", "EmptyKey",
           "KeyTooLong", "InvalidValue", "ValueTooLong", "NotAscii", "KeyNotAscii", "ValueNotAscii", "InvalidTTL",
           "TooManyItems", "PayloadTooLarge", "Unauthorized", "NotFound", "SnapshotInProgress", "ServerError",
           "Unavailable", "Overloaded", "Timeout"]
