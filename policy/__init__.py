"""The contracts between the appliance and the gate, as data plus the small code that compiles them.

``request.abnf`` is the gate's grammar, ``routes.toml`` the route policy.  The
modules here parse and check; they do no I/O beyond reading the policy files
that ship beside them; ``events`` builds the one shape of a structured log
line that both sides write, and ``loop`` picks the event loop of the gate, the
appliance and the stand-in (uvloop where installed, imported only if present).
May import: the standard library only.
"""
