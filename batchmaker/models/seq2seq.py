"""Encoder-decoder models with greedy decoding: one streamed step per target token."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from batchmaker.models.base import Model
from batchmaker.models.checks import check_token_ids, check_vocabulary
from batchmaker.types import InferRequest, ModelSignature, TensorSignature
from cells import FEEDBACK, Cell, EncoderCell, GreedyDecoderCell, RecurrentKind
from scheduler import FEEDBACK_INPUT, RequestGraph, Seq2SeqGraph


class Seq2SeqModel(Model):
    """An LSTM or GRU encoder-decoder with greedy decoding: one streamed step per target token.

    The encoder and the decoder are separate cell types with their own ready queues
    and max batch; the decoder ranks higher, so a finishing-first policy runs decoder
    steps (which finish requests) before encoder steps (which start them). They share
    one state pool: the decoder's first step reads the encoder's last state in place.
    Decoding stops after the step that emits ``eos`` (it is streamed, so a client
    sees why the output ended) or after ``max_decode_len`` steps.
    """

    def __init__(
        self,
        name: str,
        encoder: EncoderCell,
        decoder: GreedyDecoderCell,
        *,
        bos: int,
        eos: int,
        version: int = 1,
        max_input_len: int = 256,
        max_decode_len: int = 256,
        source_vocabulary: Sequence[str] = (),
        target_vocabulary: Sequence[str] = (),
    ) -> None:
        super().__init__(name, version)
        if encoder.state_specs != decoder.state_specs:
            raise ValueError(
                f"model {name!r}: encoder and decoder must carry the same state "
                f"(kind, layers, hidden size): {encoder.state_specs} vs {decoder.state_specs}"
            )
        if encoder.input_kind != "tokens":
            raise ValueError(f"model {name!r}: the encoder must take token ids")
        vocab = decoder.input_dim
        if decoder.output_dim != vocab:
            raise ValueError(
                f"model {name!r}: the decoder must score its own vocabulary "
                f"({decoder.output_dim} outputs, {vocab} target tokens)"
            )
        for field, tok in (("bos", bos), ("eos", eos)):
            if not 0 <= tok < vocab:
                raise ValueError(
                    f"model {name!r}: {field} {tok} is outside the target vocabulary [0, {vocab})"
                )
        if max_input_len < 1 or max_decode_len < 1:
            raise ValueError(
                f"model {name!r}: max_input_len and max_decode_len must be >= 1, "
                f"got {max_input_len}, {max_decode_len}"
            )
        check_vocabulary(name, "source_vocabulary", source_vocabulary, encoder.input_dim)
        check_vocabulary(name, "target_vocabulary", target_vocabulary, vocab)
        assert FEEDBACK == FEEDBACK_INPUT, "cells and scheduler disagree on the feedback input"
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False)
        self.bos, self.eos = bos, eos
        self.max_input_len = max_input_len
        self.max_decode_len = max_decode_len
        self.source_vocabulary = tuple(source_vocabulary)
        self.target_vocabulary = tuple(target_vocabulary)

    @property
    def cells(self) -> Mapping[str, Cell]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def cell_rank(self, cell: str) -> int:
        return 1 if cell == "decoder" else 0

    @functools.cached_property
    def signature(self) -> ModelSignature:
        # Cached: read on every request's validation, and a model's shape never changes.
        vocab = self.decoder.output_dim
        return ModelSignature(
            family="seq2seq",
            inputs=(TensorSignature("tokens", "INT64", (-1,)),),
            outputs=(TensorSignature("scores", "FP32", (vocab,)),),
            max_input_length=self.max_input_len,
            max_output_length=self.max_decode_len,
            max_top_k=vocab,
            vocab_size=self.encoder.input_dim,
            input_vocabulary=self.source_vocabulary,
            output_vocabulary=self.target_vocabulary,
        )

    def validate(self, request: InferRequest) -> None:
        check_token_ids(
            request.inputs,
            model=self.name,
            vocab_size=self.encoder.input_dim,
            max_len=self.max_input_len,
        )
        self._validate_options(request)

    def build_graph(self, request: InferRequest) -> RequestGraph:
        return Seq2SeqGraph(
            self.qualify("encoder"),
            self.qualify("decoder"),
            np.asarray(request.inputs, dtype=np.int64),
            self.qualify("state"),
            bos=self.bos,
            eos=self.eos,
            max_steps=request.max_output_length or self.max_decode_len,
        )

    def reference(self, request: InferRequest) -> np.ndarray:
        """Plain torch: the encoder's ``nn.LSTM``/``nn.GRU`` over the whole source, then the
        decoder's, one greedy token at a time from BOS until EOS or the cap."""
        src = torch.from_numpy(np.asarray(request.inputs, dtype=np.int64))
        cap = request.max_output_length or self.max_decode_len
        enc, dec = self.encoder, self.decoder
        assert enc.embedding is not None
        assert dec.embedding is not None
        assert dec.proj is not None
        rows = []
        with torch.inference_mode():
            _, state = enc.rnn(enc.embedding(src).unsqueeze(1))
            token = self.bos
            for _ in range(cap):
                y, state = dec.rnn(dec.embedding(torch.tensor([token])).unsqueeze(1), state)
                logits = dec.proj(y[0, 0])
                rows.append(logits.numpy())
                token = int(logits.argmax())
                if token == self.eos:
                    break
        return np.stack(rows)


def seq2seq_model(
    name: str,
    kind: RecurrentKind = "lstm",
    *,
    source_vocab: int = 40,
    target_vocab: int = 20,
    hidden_size: int = 64,
    num_layers: int = 1,
    bos: int = 1,
    eos: int = 2,
    seed: int = 0,
    version: int = 1,
    max_input_len: int = 256,
    max_decode_len: int = 64,
) -> Seq2SeqModel:
    """An encoder-decoder with reproducible random weights (tests, benchmarks)."""
    torch.manual_seed(seed)
    encoder = EncoderCell(
        kind, hidden_size=hidden_size, num_layers=num_layers, vocab_size=source_vocab
    )
    decoder = GreedyDecoderCell(
        kind,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=target_vocab,
        output_dim=target_vocab,
    )
    return Seq2SeqModel(
        name,
        encoder,
        decoder,
        bos=bos,
        eos=eos,
        version=version,
        max_input_len=max_input_len,
        max_decode_len=max_decode_len,
    )
