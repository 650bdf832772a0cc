"""The ``batchmaker`` command: one module per group of subcommands.

- ``main``: the parser and the dispatch (``batchmaker = batchmaker.cli.main:main``);
- ``flags``: flag builders the groups share, and flags + environment -> typed configs;
- ``serve``: ``serve`` and its banner;
- ``calls``: ``infer``, ``metadata``, ``health`` (client calls to a running server);
- ``admin``: ``models list|load|unload`` and ``import``;
- ``demo``: the in-process ``demo``;
- ``measure``: ``bench``, ``bench-overhead``, ``bench-coldstart``: flags here, work in
  ``batchmaker.bench``.

The top of the tree: may import anything in ``batchmaker``, and nothing imports it. The
configuration is built here, once, from flags and ``BATCHMAKER_*`` variables; nothing
below reads the environment. Heavy packages are imported inside the command that needs
them, so ``batchmaker infer`` starts without torch.
"""
