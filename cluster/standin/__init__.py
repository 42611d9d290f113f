"""A stand-in OpenAI-compatible model server: vLLM's place in the demo and tests.

Run it as ``python -m cluster.standin --host 127.0.0.1 --port 0 --model NAME
--kind chat|embeddings [--token-delay SECONDS] [--dimensions N]``; once it
listens it prints exactly one line, ``READY <port>``, to stdout.  With vLLM's
TLS flags (``--ssl-keyfile --ssl-certfile --ssl-ca-certs --ssl-cert-reqs 2``)
it serves TLS and answers nothing, on any path, to a client whose certificate
is not in the CA file (see :mod:`cluster.tls`).  A bearer
token, when wanted, comes from the environment variable
``SLUICE_BACKEND_TOKEN`` (never the command line, where ``ps`` shows it).

It speaks the OpenAI shapes that vLLM speaks (``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, SSE
streaming with ``stream_options.include_usage`` and ``continuous_usage_stats``) plus ``/health`` and a
``/stats`` counter endpoint for leak tests.  Replies are deterministic: words
drawn from a hash of the prompt, one word per token.  It never logs a prompt
or a completion.

Standard library only (uvloop is used when importable), like all of
:mod:`cluster`.
"""

from cluster.standin._api import StandinConfig
from cluster.standin.process import StandinProcess
from cluster.standin.server import StandinServer

__all__ = ["StandinConfig", "StandinServer", "StandinProcess"]
