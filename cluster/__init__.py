"""The cluster side: the gate (the ForceCommand entry), forwarding to backends,
the routing table, the scheduler and its backends, and the stand-in model server.

May import: :mod:`policy`, the standard library, and ``cryptography``.  Never
:mod:`appliance`.
"""
