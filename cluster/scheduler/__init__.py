"""The scheduler: keeps each configured service at its number of ready instances.

- :mod:`.plan`: the policy, pure (no clock, file or process): what to submit,
  drain, cancel and forget, given the instances, the load and the state.
- :mod:`.engine`: one pass, the same for both backends: observe, probe,
  account the load, decide, act, save, publish the routing table.
- :mod:`.paths` (where the state, lock and load files are) and :mod:`.phases`
  (a job's phase from its record): what the gate reads too, without the pass.
- :mod:`.slurm` and :mod:`.slurm_backend`: Slurm jobs through ``squeue``,
  ``sbatch --parsable`` and ``scancel``; :mod:`.local`: local processes (the
  embedded demo and tests).
- :mod:`.lock` (one pass at a time, free when its holder dies), :mod:`.state`
  (what passes remember, written atomically), :mod:`.load` (load as the
  gates measure it), :mod:`.trigger` (a gate's ping kicks a pass),
  :mod:`.run` (one pass, or a loop), :mod:`.status` (``sluice-cluster status``).

Nothing from a request reaches this package: job names, options, ports and
tokens come from the configuration and the scheduler itself.
"""

__all__: list[str] = []
