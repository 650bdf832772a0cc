"""Models on disk: the repository layout, configs, weights, version policy, manager, importer.

- ``store``: ``<model>/<version>/{config.json,model.safetensors}`` folders, declarative
  configs, safetensors weights, Triton-style version policies (``ModelRepository``);
- ``manager``: what a running server may load and unload, and each version's state;
- ``importer``: a user's torch ``state_dict`` -> a repository version.

May import the models, ``cells``, ``batchmaker.types`` and ``errors``. The manager drives an
engine it is handed (``attach``); nothing here imports the runtime module itself, the
server, the client or the CLI.
"""
