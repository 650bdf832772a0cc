"""Models on disk: the repository layout, configs, weights, version policy, manager, importer.

- ``store``: the repository of ``<model>/<version>/`` folders, names and Triton-style
  version policies (``ModelRepository``);
- ``folder``: one version folder, ``config.json`` + ``model.safetensors`` <-> a model,
  shapes checked before any weight is allocated;
- ``configs``: the declarative config <-> the model it describes;
- ``manager``: what a running server may load and unload, and each version's state;
- ``importer``: a user's torch ``state_dict`` -> a repository version.

May import the models, ``cells``, ``batchmaker.types`` and ``errors``. The manager drives an
engine it is handed (``attach``); nothing here imports the runtime module itself, the
server, the client or the CLI.
"""
