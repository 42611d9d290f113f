"""The gate: the program OpenSSH runs for the appliance's key (``restrict,command=``).

``entry`` reads the environment once and dispatches; ``session`` runs a mux
session; ``forward`` checks a body against its route and forwards it to a
backend; ``sealed`` opens sealed requests and seals their answers; ``sinks``
holds the interfaces they share (where an answer goes, what serves a stream),
so that they depend one way; ``usage`` pulls token counts out of responses.
May import :mod:`policy`, :mod:`cluster` and the standard library.
"""
