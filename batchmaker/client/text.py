"""Text <-> ids for models with a vocabulary: the client's name for ``batchmaker.wire.text``.

The functions moved to the wire layer when the server's JSON doors (``batchmaker
transform``, SageMaker's ``/invocations``) started reading ``text`` and s-expression
trees too; clients keep importing them from here.
"""

from batchmaker.wire.text import (
    decode,
    detokenize,
    encode,
    format_sexpr,
    parse_sexpr,
    tree_root,
)

__all__ = ["decode", "detokenize", "encode", "format_sexpr", "parse_sexpr", "tree_root"]
