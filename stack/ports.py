"""Free local ports: one for a process of a test, or a whole stack's worth."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (32768 and up): a port from there can be the local
# end of somebody's outgoing connection by the time a component binds it, minutes later.
STACK_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port free now, from the ephemeral range: for a process started right away."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortPicker:
    """Distinct free ports below the ephemeral range, never the same one twice."""

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.rng = random.Random()

    def __call__(self, neighbour: int = 0) -> int:
        """A free port; with neighbour, port + neighbour must be free too (and is kept)."""
        for _ in range(200):
            port = self.rng.choice(STACK_PORTS)
            wanted = {port, port + neighbour}
            if not wanted & self.taken and all(port_free(p) for p in wanted):
                self.taken |= wanted
                return port
        raise OSError("no free ports below the ephemeral range")
