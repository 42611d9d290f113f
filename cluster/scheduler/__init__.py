"""The scheduler: keeps each configured service at its number of ready instances.

``local`` runs services as local processes (the embedded demo and tests);
the Slurm backend runs them as batch jobs.  Either writes the routing table
that the gate reads.  Nothing from a request reaches this package.
"""
