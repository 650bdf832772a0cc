"""``batchmaker import``: a user's own torch modules, saved the ways users save them, become
repository versions whose served model computes what the user's module computes.

Each test defines the user's module here (its own names, ``batch_first`` or not), saves
its ``state_dict`` to a real file, imports it, loads the version back from the repository
and compares the served model's ``reference`` with the user's ``forward`` on random input.
Nothing is mocked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from batchmaker.cli.main import main
from batchmaker.errors import Code, InvalidRequestError, ModelLoadError
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.repository.folder import CONFIG_FILE, WEIGHTS_FILE
from batchmaker.repository.importer import ImportOptions, import_state_dict
from batchmaker.repository.store import ModelRepository
from batchmaker.types import InferRequest

TOL = 1e-6

# ---- the user's modules ------------------------------------------------------------------


class LM(nn.Module):
    """A language model as users write one: embedding, recurrent stack, linear head."""

    def __init__(
        self,
        rnn: type[nn.LSTM] | type[nn.GRU] = nn.LSTM,
        *,
        vocab: int = 11,
        emb: int = 5,
        hidden: int = 8,
        num_layers: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = rnn(emb, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab, bias=bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.emb(tokens))
        out: torch.Tensor = self.fc(y)
        return out


class TwoRNNs(nn.Module):
    """Two candidate recurrent stacks over one embedding (say a fast and a slow model)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 5)
        self.fast = nn.LSTM(5, 8)
        self.slow = nn.LSTM(5, 8, num_layers=2)
        self.fc = nn.Linear(8, 11)

    def forward_slow(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.slow(self.emb(tokens).unsqueeze(1))
        out: torch.Tensor = self.fc(y.squeeze(1))
        return out


class Encoder(nn.Module):
    def __init__(self, rnn: type[nn.LSTM] | type[nn.GRU], vocab: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.rnn = rnn(4, hidden, num_layers=layers)


class Decoder(nn.Module):
    def __init__(self, rnn: type[nn.LSTM] | type[nn.GRU], vocab: int, hidden: int, layers: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, 5)
        self.cell = rnn(5, hidden, num_layers=layers)
        self.out = nn.Linear(hidden, vocab)


class Translator(nn.Module):
    """An encoder-decoder whose submodules are named as this user named them."""

    def __init__(
        self,
        rnn: type[nn.LSTM] | type[nn.GRU] = nn.GRU,
        *,
        layers: int = 1,
        encoder_hidden: int = 6,
        decoder_hidden: int = 6,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(rnn, 9, encoder_hidden, layers)
        self.decoder = Decoder(rnn, 7, decoder_hidden, layers)

    @torch.no_grad()
    def greedy(self, source: list[int], *, bos: int, eos: int | None, cap: int) -> np.ndarray:
        """The user's own greedy decoding: ``[steps, target_vocab]`` logits."""
        src = torch.tensor(source)
        _, state = self.encoder.rnn(self.encoder.embed(src).unsqueeze(1))
        token, rows = bos, []
        for _ in range(cap):
            y, state = self.decoder.cell(
                self.decoder.tok_emb(torch.tensor([token])).unsqueeze(1), state
            )
            logits = self.decoder.out(y[0, 0])
            rows.append(logits.numpy())
            token = int(logits.argmax())
            if token == eos:
                break
        return np.stack(rows)


class Payload:
    """Unpickling this creates ``path``: proof that code ran while a file was read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.path),))


# ---- helpers ------------------------------------------------------------------------------


def seeded(seed: int, factory: Any, *args: Any, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    return factory(*args, **kwargs).eval()


def save_pt(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def import_and_load(weights: Path, root: Path, **options: Any) -> Model:
    folder = import_state_dict(weights, root, ImportOptions(**options))
    name, version = options["name"], int(folder.name)
    assert folder == root / name / str(version)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    return ModelRepository(root).load(name, version)


def random_tokens(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, length).tolist()


def served(model: Model, inputs: Any, **request: Any) -> np.ndarray:
    return model.reference(InferRequest(model.name, inputs, **request))


def assert_lm_matches(model: Model, user: LM, vocab: int = 11) -> None:
    assert isinstance(model, SequenceModel)
    for seed, length in enumerate((1, 6, 17)):
        tokens = random_tokens(vocab, length, seed)
        with torch.no_grad():
            expected = user(torch.tensor([tokens]))[0].numpy()
        got = served(model, tokens)
        assert got.shape == expected.shape == (length, vocab)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


# ---- sequence models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rnn", "num_layers"),
    [(nn.LSTM, 1), (nn.LSTM, 2), (nn.GRU, 1), (nn.GRU, 3)],
    ids=["lstm", "lstm-2-layers", "gru", "gru-3-layers"],
)
def test_a_language_model_serves_what_the_users_module_computes(
    tmp_path: Path, rnn: type[nn.LSTM] | type[nn.GRU], num_layers: int
) -> None:
    user = seeded(0, LM, rnn, num_layers=num_layers)
    family = "lstm" if rnn is nn.LSTM else "gru"
    weights = save_pt(user.state_dict(), tmp_path / "lm.pt")

    model = import_and_load(weights, tmp_path / "repo", name="lm", family=family)

    config = json.loads((tmp_path / "repo" / "lm" / "1" / CONFIG_FILE).read_text())
    assert config == {
        "family": family,
        "hidden_size": 8,
        "num_layers": num_layers,
        "vocab_size": 11,
        "embedding_dim": 5,
        "output_dim": 11,
        "max_input_length": 1024,  # the default
    }
    assert_lm_matches(model, user)


@pytest.mark.parametrize(("rnn", "family"), [(nn.GRU, "gru"), (nn.LSTM, "lstm")])
def test_a_bare_rnn_serves_its_hidden_states_over_vectors(
    tmp_path: Path, rnn: type[nn.LSTM] | type[nn.GRU], family: str
) -> None:
    user = seeded(1, rnn, 4, 6, num_layers=2)
    weights = save_pt(user.state_dict(), tmp_path / "bare.pth")

    model = import_and_load(weights, tmp_path / "repo", name="bare", family=family)

    assert isinstance(model, SequenceModel)
    assert model.signature.vocab_size is None
    assert model.signature.inputs[0].shape == (-1, 4)
    rng = np.random.default_rng(2)
    for length in (1, 5, 12):
        x = rng.standard_normal((length, 4)).astype(np.float32)
        with torch.no_grad():
            expected, _ = user(torch.from_numpy(x).unsqueeze(1))  # [T, 1, H]: seq first
        got = served(model, x)
        assert got.shape == (length, 6)
        np.testing.assert_allclose(got, expected[:, 0].numpy(), rtol=0, atol=TOL)


def test_a_training_checkpoint_wrapping_the_state_dict_imports(tmp_path: Path) -> None:
    user = seeded(2, LM, nn.GRU, num_layers=2)
    checkpoint = {
        "state_dict": user.state_dict(),
        "epoch": 12,
        "best_loss": 1.25,
        "args": {"lr": 0.01, "tag": "run-3"},
    }
    weights = save_pt(checkpoint, tmp_path / "checkpoint.pt")

    model = import_and_load(weights, tmp_path / "repo", name="ckpt", family="gru")

    assert_lm_matches(model, user)


def test_a_safetensors_state_dict_imports(tmp_path: Path) -> None:
    user = seeded(3, LM, nn.LSTM, num_layers=2, emb=8, hidden=7)
    weights = tmp_path / "lm.safetensors"
    save_file(dict(user.state_dict()), str(weights))

    model = import_and_load(weights, tmp_path / "repo", name="st", family="lstm")

    assert_lm_matches(model, user)


def test_a_wrapped_module_with_nested_prefixes_imports(tmp_path: Path) -> None:
    """Keys as a ``DataParallel`` or a wrapper module writes them: ``module.net.lstm.*``."""
    user = seeded(4, LM, nn.LSTM)
    nested = {f"module.net.{k}": v for k, v in user.state_dict().items()}
    weights = save_pt(nested, tmp_path / "wrapped.pt")

    model = import_and_load(weights, tmp_path / "repo", name="wrapped", family="lstm")

    assert_lm_matches(model, user)


def test_vocabularies_and_limits_are_written_to_the_config(tmp_path: Path) -> None:
    user = seeded(5, LM, nn.GRU)
    weights = save_pt(user.state_dict(), tmp_path / "lm.pt")
    vocabulary = [f"tok{i}" for i in range(11)]

    model = import_and_load(
        weights,
        tmp_path / "repo",
        name="lm",
        family="gru",
        max_input_length=33,
        vocabulary=vocabulary,
        output_vocabulary=vocabulary,
    )

    assert model.signature.max_input_length == 33
    assert model.signature.input_vocabulary == tuple(vocabulary)
    assert model.signature.output_vocabulary == tuple(vocabulary)
    assert_lm_matches(model, user)


def test_a_vocabulary_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(5, LM, nn.GRU).state_dict(), tmp_path / "lm.pt")
    with pytest.raises(ModelLoadError, match="vocabulary has 3 entries, not 11"):
        import_state_dict(
            weights,
            tmp_path / "repo",
            ImportOptions(name="lm", family="gru", vocabulary=["a", "b", "c"]),
        )
    assert not (tmp_path / "repo" / "lm" / "1").exists()


def test_an_output_layer_without_bias_is_not_silently_dropped(tmp_path: Path) -> None:
    """``nn.Linear(hidden, vocab, bias=False)`` is a common LM head. The import must either
    serve it or refuse the file; it must not serve the hidden states in its place."""
    user = seeded(6, LM, nn.LSTM, bias=False)
    weights = save_pt(user.state_dict(), tmp_path / "lm.pt")
    try:
        model = import_and_load(weights, tmp_path / "repo", name="lm", family="lstm")
    except ModelLoadError as exc:
        refused = exc.message
    else:
        refused = ""
        assert_lm_matches(model, user)
    assert refused == "" or "fc.weight" in refused, refused


# ---- encoder-decoders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rnn", "layers", "seed", "eos"),
    [(nn.GRU, 1, 11, 3), (nn.LSTM, 2, 7, 4)],
    ids=["gru", "lstm-2-layers"],
)
def test_an_encoder_decoder_decodes_what_the_users_greedy_loop_decodes(
    tmp_path: Path, rnn: type[nn.LSTM] | type[nn.GRU], layers: int, seed: int, eos: int
) -> None:
    """Seed and EOS were picked so that some sources end at EOS and others run to the cap
    (random decoders soon repeat one token); the test pins both endings."""
    user = seeded(seed, Translator, rnn, layers=layers)
    sources = [random_tokens(9, n, i) for i, n in enumerate((1, 4, 9, 15))]
    weights = save_pt(user.state_dict(), tmp_path / "translator.pt")
    family = "lstm" if rnn is nn.LSTM else "gru"

    model = import_and_load(
        weights,
        tmp_path / "repo",
        name="mt",
        family="seq2seq",
        bos=0,
        eos=eos,
        max_output_length=12,
    )

    assert isinstance(model, Seq2SeqModel)
    config = json.loads((tmp_path / "repo" / "mt" / "1" / CONFIG_FILE).read_text())
    assert config == {
        "family": "seq2seq",
        "cell": family,
        "hidden_size": 6,
        "num_layers": layers,
        "source_vocab_size": 9,
        "target_vocab_size": 7,
        "source_embedding_dim": 4,
        "target_embedding_dim": 5,
        "bos": 0,
        "eos": eos,
        "max_input_length": 256,  # the default
        "max_output_length": 12,
    }
    lengths = []
    for source in sources:
        expected = user.greedy(source, bos=0, eos=eos, cap=12)
        got = served(model, source)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
        np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
        lengths.append(len(got))
        capped = served(model, source, max_output_length=2)
        np.testing.assert_allclose(capped, expected[:2], rtol=0, atol=TOL)
    assert 12 in lengths
    ended = [source for source, n in zip(sources, lengths, strict=True) if n < 12]
    assert ended
    for source in ended:
        assert int(served(model, source)[-1].argmax()) == eos


# ---- what the import refuses ---------------------------------------------------------------


def import_error(weights: Path, root: Path, **options: Any) -> str:
    with pytest.raises(ModelLoadError) as info:
        import_state_dict(weights, root, ImportOptions(**options))
    assert info.value.code is Code.FAILED_PRECONDITION
    return info.value.message


@pytest.mark.parametrize(
    ("rnn", "family", "actual"), [(nn.LSTM, "gru", "lstm"), (nn.GRU, "lstm", "gru")]
)
def test_the_wrong_family_for_the_tensors_is_refused(
    tmp_path: Path, rnn: type[nn.LSTM] | type[nn.GRU], family: str, actual: str
) -> None:
    weights = save_pt(seeded(0, LM, rnn).state_dict(), tmp_path / "lm.pt")
    message = import_error(weights, tmp_path / "repo", name="lm", family=family)
    assert message == f"{weights}: the tensors are a {actual}, not a {family}"
    assert not (tmp_path / "repo" / "lm").exists()


def test_seq2seq_tensors_imported_as_an_lm_are_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(0, Translator).state_dict(), tmp_path / "mt.pt")
    message = import_error(weights, tmp_path / "repo", name="mt", family="gru")
    assert "found 2 recurrent modules (['decoder.cell.', 'encoder.rnn.'])" in message


def test_an_lm_imported_as_seq2seq_is_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(0, LM).state_dict(), tmp_path / "lm.pt")
    message = import_error(weights, tmp_path / "repo", name="lm", family="seq2seq", bos=0, eos=1)
    assert message.startswith(f"{weights}: no encoder.* tensors"), message


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(0, LM).state_dict(), tmp_path / "lm.pt")
    message = import_error(weights, tmp_path / "repo", name="lm", family="treelstm")
    assert message == "family 'treelstm' cannot be imported (lstm, gru, seq2seq)"


def test_a_bidirectional_rnn_is_refused(tmp_path: Path) -> None:
    user = seeded(0, nn.LSTM, 4, 6, bidirectional=True)
    weights = save_pt(user.state_dict(), tmp_path / "bi.pt")
    message = import_error(weights, tmp_path / "repo", name="bi", family="lstm")
    assert message == f"{weights}: bidirectional RNNs cannot stream; export one direction"


def test_an_rnn_without_biases_is_refused(tmp_path: Path) -> None:
    user = seeded(0, nn.GRU, 4, 6, bias=False)
    weights = save_pt(user.state_dict(), tmp_path / "nobias.pt")
    message = import_error(weights, tmp_path / "repo", name="nb", family="gru")
    assert message == f"{weights}: missing bias_ih_l0 (biases are required)"


def test_two_rnns_are_ambiguous_until_one_is_named(tmp_path: Path) -> None:
    user = seeded(8, TwoRNNs)
    weights = save_pt(user.state_dict(), tmp_path / "two.pt")

    message = import_error(weights, tmp_path / "repo", name="two", family="lstm")
    assert message == (
        f"{weights}: found 2 recurrent modules (['fast.', 'slow.']); name one with --rnn-prefix"
    )
    model = import_and_load(
        weights, tmp_path / "repo", name="two", family="lstm", rnn_prefix="slow."
    )
    assert (
        json.loads((tmp_path / "repo" / "two" / "1" / CONFIG_FILE).read_text())["num_layers"] == 2
    )
    tokens = random_tokens(11, 7, 0)
    with torch.no_grad():
        expected = user.forward_slow(torch.tensor(tokens)).numpy()
    np.testing.assert_allclose(served(model, tokens), expected, rtol=0, atol=TOL)


def test_rnn_prefix_takes_the_module_name_as_the_other_prefixes_do(tmp_path: Path) -> None:
    """``--embedding-prefix emb`` and ``--embedding-prefix emb.`` both work; so must
    ``--rnn-prefix slow`` (the module's name, what a user types) and ``slow.``."""
    user = seeded(8, TwoRNNs)
    weights = save_pt(user.state_dict(), tmp_path / "two.pt")
    model = import_and_load(
        weights,
        tmp_path / "repo",
        name="two",
        family="lstm",
        rnn_prefix="slow",
        embedding_prefix="emb",
        proj_prefix="fc",
    )
    tokens = random_tokens(11, 7, 1)
    with torch.no_grad():
        expected = user.forward_slow(torch.tensor(tokens)).numpy()
    np.testing.assert_allclose(served(model, tokens), expected, rtol=0, atol=TOL)


def test_an_rnn_prefix_that_names_nothing_is_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(8, TwoRNNs).state_dict(), tmp_path / "two.pt")
    message = import_error(
        weights, tmp_path / "repo", name="two", family="lstm", rnn_prefix="medium."
    )
    assert message == f"{weights}: no medium.weight_ih_l0 tensor"


def test_two_possible_embeddings_are_ambiguous_until_one_is_named(tmp_path: Path) -> None:
    user = seeded(9, LM, nn.GRU)
    tensors = dict(user.state_dict())
    tensors["pos_emb.weight"] = torch.randn(30, 5)  # also [rows, 5]: fits as an embedding
    weights = save_pt(tensors, tmp_path / "lm.pt")

    message = import_error(weights, tmp_path / "repo", name="lm", family="gru")
    assert "several possible embeddings" in message
    assert "'emb.'" in message
    assert "'pos_emb.'" in message
    assert message.endswith("name one with --embedding-prefix")
    with pytest.raises(ModelLoadError, match=r"--embedding-prefix 'fc' does not name a fitting"):
        import_state_dict(
            weights, tmp_path / "repo", ImportOptions("lm", "gru", embedding_prefix="fc")
        )


def test_seq2seq_needs_bos_and_eos(tmp_path: Path) -> None:
    weights = save_pt(seeded(0, Translator).state_dict(), tmp_path / "mt.pt")
    for options in ({}, {"bos": 0}, {"eos": 1}):
        message = import_error(weights, tmp_path / "repo", name="mt", family="seq2seq", **options)
        assert message == "seq2seq: give the decoder's --bos and --eos token ids"
    assert not (tmp_path / "repo" / "mt").exists()


def test_seq2seq_bos_outside_the_target_vocabulary_is_refused(tmp_path: Path) -> None:
    weights = save_pt(seeded(0, Translator).state_dict(), tmp_path / "mt.pt")
    message = import_error(weights, tmp_path / "repo", name="mt", family="seq2seq", bos=7, eos=1)
    assert "bos 7 is outside the target vocabulary [0, 7)" in message


def test_encoder_and_decoder_of_different_sizes_are_refused(tmp_path: Path) -> None:
    user = seeded(0, Translator, nn.LSTM, encoder_hidden=6, decoder_hidden=8)
    weights = save_pt(user.state_dict(), tmp_path / "mt.pt")
    message = import_error(weights, tmp_path / "repo", name="mt", family="seq2seq", bos=0, eos=1)
    assert message.startswith(f"{weights}: encoder (lstm 1x6) and decoder (lstm 1x8) must match"), (
        message
    )


def test_encoder_and_decoder_of_different_kinds_are_refused(tmp_path: Path) -> None:
    tensors = {
        **{k: v for k, v in seeded(0, Translator, nn.LSTM).state_dict().items() if "encoder" in k},
        **{k: v for k, v in seeded(0, Translator, nn.GRU).state_dict().items() if "decoder" in k},
    }
    weights = save_pt(tensors, tmp_path / "mt.pt")
    message = import_error(weights, tmp_path / "repo", name="mt", family="seq2seq", bos=0, eos=1)
    assert "encoder (lstm 1x6) and decoder (gru 1x6) must match" in message


def test_a_pickled_module_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    user = seeded(0, nn.GRU, 4, 6)
    user.payload = Payload(marker)  # type: ignore[assignment]
    weights = save_pt(user, tmp_path / "module.pt")  # torch.save(module), not its state_dict

    message = import_error(weights, tmp_path / "repo", name="m", family="gru")

    assert str(weights) in message
    assert not marker.exists()
    assert not (tmp_path / "repo" / "m").exists()
    # The file is live: loading it the unsafe way does run the payload.
    torch.load(weights, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("junk.pt", b"not a checkpoint"),
        ("empty.pt", b""),
        ("junk.safetensors", b"not safetensors at all"),
        ("empty.safetensors", b""),
    ],
)
def test_an_unreadable_file_is_refused(tmp_path: Path, filename: str, content: bytes) -> None:
    weights = tmp_path / filename
    weights.write_bytes(content)
    message = import_error(weights, tmp_path / "repo", name="x", family="lstm")
    assert message.startswith(f"{weights}: cannot read a state_dict ("), message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    message = import_error(tmp_path / "absent.pt", tmp_path / "repo", name="x", family="lstm")
    assert message.startswith(f"{tmp_path / 'absent.pt'}: cannot read a state_dict ("), message


@pytest.mark.parametrize(
    "obj",
    [[torch.zeros(2)], {"a": 1}, {"state_dict": {"w": [1.0]}}, torch.zeros(3)],
    ids=["list", "no-tensors", "checkpoint-without-tensors", "one-tensor"],
)
def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path, obj: Any) -> None:
    weights = save_pt(obj, tmp_path / "odd.pt")
    message = import_error(weights, tmp_path / "repo", name="x", family="lstm")
    assert message == f"{weights}: expected a state_dict (a mapping of names to tensors)"


# ---- versions -----------------------------------------------------------------------------


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    first = save_pt(seeded(0, LM).state_dict(), tmp_path / "first.pt")
    second = save_pt(seeded(1, LM).state_dict(), tmp_path / "second.pt")
    folder = import_state_dict(first, root, ImportOptions("lm", "lstm", version=1))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    message = import_error(second, root, name="lm", family="lstm", version=1)

    assert message == f"{folder} already exists"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert_lm_matches(ModelRepository(root).load("lm", 1), seeded(0, LM))


def test_versions_are_numbered_one_above_the_highest(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    weights = save_pt(seeded(0, LM, nn.GRU).state_dict(), tmp_path / "lm.pt")

    def new_version(**options: Any) -> str:
        return import_state_dict(weights, root, ImportOptions("lm", "gru", **options)).name

    assert [new_version(), new_version()] == ["1", "2"]
    assert new_version(version=7) == "7"
    (root / "lm" / "latest").mkdir()  # not a version: ignored
    (root / "lm" / "99").write_text("a file, not a version folder")
    assert new_version() == "8"
    assert new_version(version=3) == "3"
    assert new_version() == "9"
    assert list(ModelRepository(root).model_versions("lm")) == [1, 2, 3, 7, 8, 9]
    assert ModelRepository(root).selected_versions("lm") == [9]


# ---- the CLI ------------------------------------------------------------------------------


def test_cli_import_writes_the_version_and_prints_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = seeded(10, LM, nn.LSTM, num_layers=2)
    weights = save_pt(user.state_dict(), tmp_path / "lm.pt")
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("".join(f"w{i}\n" for i in range(11)))
    root = tmp_path / "repo"

    code = main(
        [
            "import",
            str(weights),
            "--repository",
            str(root),
            "--name",
            "cli-lm",
            "--family",
            "lstm",
            "--vocabulary",
            str(vocabulary),
            "--max-input-length",
            "50",
        ]
    )

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"wrote {root / 'cli-lm' / '1'}\n"
    model = ModelRepository(root).load("cli-lm", 1)
    assert model.signature.input_vocabulary == tuple(f"w{i}" for i in range(11))
    assert model.signature.max_input_length == 50
    assert_lm_matches(model, user)


def _tree(base: Path) -> set[Path]:
    return {p.relative_to(base) for p in base.rglob("*")}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "ABSOLUTE", "", "-x", "lm\n"])
def test_a_name_that_is_not_a_folder_name_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The name becomes ``<repository>/<name>/``: ``..`` or an absolute path would write
    outside the repository, ``.`` onto its root. Nothing is written anywhere."""
    base = tmp_path / "base"
    root = base / "sub" / "repo"
    root.mkdir(parents=True)
    weights = save_pt(seeded(0, LM, nn.GRU).state_dict(), tmp_path / "lm.pt")
    name = str(base / "abs") if name == "ABSOLUTE" else name
    before = _tree(base)

    code = main(
        ["import", str(weights), "--repository", str(root), f"--name={name}", "--family", "gru"]
    )

    err = capsys.readouterr().err
    assert code == 1
    assert f"--name {name!r} is not a valid model name" in err
    assert _tree(base) == before
    with pytest.raises(InvalidRequestError, match="not a valid model name"):
        import_state_dict(weights, root, ImportOptions(name, "gru"))
    assert _tree(base) == before


def test_cli_import_of_a_seq2seq_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    user = seeded(11, Translator, nn.GRU)
    weights = save_pt(user.state_dict(), tmp_path / "mt.pt")
    root = tmp_path / "repo"
    argv = ["import", str(weights), "--repository", str(root), "--name", "mt"]
    argv += ["--family", "seq2seq", "--bos", "0", "--eos", "1", "--version", "4"]

    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote {root / 'mt' / '4'}\n"
    model = ModelRepository(root).load("mt", 4)
    source = random_tokens(9, 6, 3)
    expected = user.greedy(source, bos=0, eos=1, cap=5)
    np.testing.assert_allclose(served(model, source, max_output_length=5), expected, atol=TOL)


@pytest.mark.parametrize(
    ("filename", "content"),
    [("junk.pt", b"not a checkpoint"), ("truncated.safetensors", b"\x10\x00\x00")],
)
def test_cli_import_of_a_bad_file_exits_1_with_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], filename: str, content: bytes
) -> None:
    weights = tmp_path / filename
    weights.write_bytes(content)
    root = tmp_path / "repo"

    code = main(
        ["import", str(weights), "--repository", str(root), "--name", "x", "--family", "gru"]
    )

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: FAILED_PRECONDITION: {weights}: cannot read a state_dict"), err
    assert not (root / "x").exists()


def test_cli_import_of_the_wrong_family_exits_1_with_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = save_pt(seeded(0, LM, nn.GRU).state_dict(), tmp_path / "lm.pt")
    argv = ["import", str(weights), "--repository", str(tmp_path), "--name", "x"]
    assert main([*argv, "--family", "lstm"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: FAILED_PRECONDITION: {weights}: the tensors are a gru, not a lstm\n"
