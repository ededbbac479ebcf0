"""Hooks: wake an agent when an envelope is stored (docs/hooks.md, docs/protocol.md §10).

- ``spec``: the ``[[hooks]]`` tables of config.toml, checked (standard library only: the CLI reads
  config.toml too).
- ``schedule``: the sans-I/O core: which stored items a hook still owes a run, when the next run
  may start (concurrency, coalescing, the per-sender rate, backoff), and what each outcome changes.
- ``transport``: one run of one hook: an HTTP request (httpx, imported only here) or a process.
- ``runner``: the trio side: one task per hook, its runs, and their progress in the store.
"""
