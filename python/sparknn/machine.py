"""What this machine has to give: memory available for new work."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory available to start new work (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
