"""A process's readable memory, region by region, for the tests that look for a canary in it."""

from __future__ import annotations

from collections.abc import Iterator


def process_memory(pid: int) -> Iterator[bytes]:
    """Each readable mapping of process ``pid`` (root, or the same user with ptrace allowed)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
