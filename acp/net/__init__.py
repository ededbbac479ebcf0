"""The shell: sockets, tasks, time and the one zeroconf thread."""
