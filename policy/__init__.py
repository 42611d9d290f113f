"""The contracts between the appliance and the gate, as data plus the small code that compiles them.

``request.abnf`` is the gate's grammar, ``routes.toml`` the route policy.  The
modules here parse and check; they do no I/O beyond reading the policy files
that ship beside them; ``events`` builds the one shape of a structured log
line that both sides write.  May import: the standard library only.
"""
