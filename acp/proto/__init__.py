"""The sans-I/O core: bytes in, values out. No trio, sockets, clocks or threads in here."""
