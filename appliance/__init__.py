"""The appliance: the Starlette app served by Hypercorn that users talk to.

Authentication, quotas, accounting, the OpenAI-compatible API and the
transports to the gate live here.  May import: :mod:`policy` and the
appliance's own dependencies; never the code that opens sealed requests.
"""
