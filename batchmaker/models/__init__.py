"""The model families: how a request unfolds into nodes, which cells they run, what is valid.

- ``base``: the ``Model`` contract the engine depends on (no torch at import);
- ``checks``: input checks the families share (numpy only);
- ``sequence``, ``seq2seq``, ``tree``: the LSTM/GRU, encoder-decoder and TreeLSTM families;
- ``builtin``: the models a server can serve by name, with reproducible random weights.

May import ``batchmaker.types``, ``batchmaker.errors``, ``cells`` and ``scheduler``; never
the runtime, the server, the client or the repository.
"""
