"""atheris fuzz targets for the gate's parsers, one invariant each.

Every target: any input is either accepted as a typed value or rejected with a
:class:`policy.errors.SluiceError`; anything else (another exception, a value of
another type) is a crash.  Run one for long (from the repository root)::

    python threat_model/fuzz/fuzz_grammar.py -atheris_runs=1000000
    python threat_model/fuzz/fuzz_frames.py -max_total_time=3600 corpus/frames/
    python threat_model/fuzz/fuzz_bodies.py -jobs=4 -workers=4

tests/security/test_fuzz_short.py runs each for a few seconds.
"""
