"""The model repository on disk: every family survives a save and a load bit for bit, every
kind of bad folder is a ``ModelLoadError`` naming the folder and the problem, version
policies pick the versions Triton's would, and one bad folder never keeps the rest from
loading. Real files in ``tmp_path``, real torch; nothing is mocked."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from batchmaker.errors import Code, ModelLoadError, ModelNotFoundError
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel, recurrent_model
from batchmaker.models.tree import TreeModel
from batchmaker.repository.configs import model_config
from batchmaker.repository.folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    model_state_dict,
    save_model,
)
from batchmaker.repository.manager import AVAILABLE, UNAVAILABLE, ModelManager, VersionState
from batchmaker.repository.store import POLICY_FILE, ModelRepository, VersionPolicy
from batchmaker.types import InferRequest, TreeInput
from cells import BinaryTreeLSTMCell, EncoderCell, GreedyDecoderCell, RecurrentStackCell

# ---- models of every family -------------------------------------------------------------


def words(n: int, stem: str = "w") -> list[str]:
    return [f"{stem}{i}" for i in range(n)]


def lstm_token_lm(name: str = "lm", version: int = 3, seed: int = 1) -> SequenceModel:
    """A 2-layer LSTM language model with its own embedding width and both vocabularies."""
    torch.manual_seed(seed)
    cell = RecurrentStackCell(
        "lstm", hidden_size=8, num_layers=2, vocab_size=6, embedding_dim=5, output_dim=6
    )
    model = SequenceModel(
        name,
        cell,
        version=version,
        max_input_len=40,
        vocabulary=words(6),
        output_vocabulary=words(6, "o"),
    )
    model.max_batch = {"step": 4}
    return model


def gru_vectors() -> SequenceModel:
    """A GRU over 3-wide vectors with no projection: it streams its hidden state."""
    torch.manual_seed(2)
    cell = RecurrentStackCell("gru", hidden_size=7, num_layers=1, input_dim=3)
    model = SequenceModel("vec", cell, version=1, max_input_len=12)
    model.max_batch = {"step": 2}
    return model


def seq2seq(kind: str) -> Seq2SeqModel:
    torch.manual_seed(3 if kind == "lstm" else 4)
    encoder = EncoderCell(
        kind,  # type: ignore[arg-type]
        hidden_size=6,
        num_layers=2,
        vocab_size=9,
        embedding_dim=4,
    )
    decoder = GreedyDecoderCell(
        kind,  # type: ignore[arg-type]
        hidden_size=6,
        num_layers=2,
        vocab_size=7,
        embedding_dim=5,
        output_dim=7,
    )
    model = Seq2SeqModel(
        f"s2s-{kind}",
        encoder,
        decoder,
        bos=0,
        eos=1,
        version=2,
        max_input_len=20,
        max_decode_len=10,
        source_vocabulary=words(9, "s"),
        target_vocabulary=words(7, "t"),
    )
    model.max_batch = {"encoder": 3, "decoder": 5}
    return model


def treelstm() -> TreeModel:
    torch.manual_seed(5)
    cell = BinaryTreeLSTMCell(vocab_size=5, hidden_size=6, num_classes=3, embedding_dim=4)
    model = TreeModel(
        "tree",
        cell,
        version=1,
        max_nodes=30,
        max_depth=6,
        vocabulary=words(5),
        classes=["neg", "neutral", "pos"],
    )
    model.max_batch = {"node": 8}
    return model


def requests_for(model: Model) -> list[InferRequest]:
    rng = np.random.default_rng(0)
    if isinstance(model, TreeModel):
        return [
            InferRequest(model.name, TreeInput(tokens=[3], children=[[]])),
            InferRequest(model.name, TreeInput(tokens=[0, 1, 2], children=[[1, 2], [], []])),
            InferRequest(
                model.name,
                TreeInput(tokens=[4, 0, 2, 1, 3], children=[[], [0], [1, 3], [4], []]),
            ),
        ]
    if isinstance(model, SequenceModel) and model.cell.input_kind == "vectors":
        return [
            InferRequest(model.name, rng.standard_normal((t, 3)).astype(np.float32))
            for t in (1, 4, 9)
        ]
    vocab = model.signature.vocab_size
    assert vocab is not None
    return [InferRequest(model.name, rng.integers(0, vocab, t).tolist()) for t in (1, 5, 13)]


FAMILIES: dict[str, Callable[[], Model]] = {
    "lstm-token-lm": lstm_token_lm,
    "gru-vectors": gru_vectors,
    "seq2seq-lstm": lambda: seq2seq("lstm"),
    "seq2seq-gru": lambda: seq2seq("gru"),
    "treelstm": treelstm,
}


def pickle_or_zip(data: bytes) -> bool:
    """Whether ``data`` opens like a pickle (protocol 2+) or a torch.save zip archive."""
    return data[:1] == b"\x80" or data[:4] == b"PK\x03\x04"


# ---- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_then_load_serves_the_same_outputs_and_config(family: str, tmp_path: Path) -> None:
    original = FAMILIES[family]()
    folder = save_model(original, tmp_path)
    assert folder == tmp_path / original.name / str(original.version)

    loaded = load_model(folder, original.name, original.version)

    assert type(loaded) is type(original)
    assert (loaded.name, loaded.version) == (original.name, original.version)
    assert model_config(loaded) == model_config(original)
    assert json.loads((folder / CONFIG_FILE).read_text()) == model_config(original)
    assert loaded.max_batch == original.max_batch
    assert loaded.signature == original.signature
    want = model_state_dict(original)
    got = model_state_dict(loaded)
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    for request in requests_for(original):
        expected = original.reference(request)
        assert expected.size > 0
        np.testing.assert_array_equal(loaded.reference(request), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_saved_version_is_exactly_json_and_safetensors_with_no_pickle(
    family: str, tmp_path: Path
) -> None:
    model = FAMILIES[family]()
    folder = save_model(model, tmp_path)

    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    version_dir = f"{model.name}/{model.version}"
    assert everything == [
        model.name,
        version_dir,
        f"{version_dir}/{CONFIG_FILE}",
        f"{version_dir}/{WEIGHTS_FILE}",
    ]
    for path in folder.iterdir():
        assert not pickle_or_zip(path.read_bytes()), path.name

    config_text = (folder / CONFIG_FILE).read_text()
    assert config_text.lstrip().startswith("{")
    # safetensors: an 8-byte little-endian header length, then that many bytes of JSON
    # naming every tensor, then the raw data.
    data = (folder / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    assert set(header) == set(model_state_dict(model))
    assert {entry["dtype"] for entry in header.values()} == {"F32"}
    end = max(entry["data_offsets"][1] for entry in header.values())
    assert len(data) == 8 + header_len + end


def test_saving_twice_overwrites_the_same_folder_with_the_new_weights(tmp_path: Path) -> None:
    first = lstm_token_lm(seed=1)
    second = lstm_token_lm(seed=2)
    folder = save_model(first, tmp_path)
    assert save_model(second, tmp_path) == folder
    loaded = load_model(folder, "lm", 3)
    request = InferRequest("lm", [1, 2, 3])
    np.testing.assert_array_equal(loaded.reference(request), second.reference(request))
    assert not np.array_equal(loaded.reference(request), first.reference(request))


# ---- bad folders ---------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A loadable ``lm/1`` folder (the 2-layer LSTM LM) for the tests below to break."""
    return save_model(lstm_token_lm(version=1), tmp_path / "repo")


def load_error(folder: Path, name: str = "lm", version: int = 1) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(folder, name, version)
    assert info.value.code is Code.FAILED_PRECONDITION
    message = info.value.message
    assert f"{name}/{version}" in message, message
    return message


def edit_config(folder: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite ``config.json`` as ``edit`` returns it (or as it left it, for ``None``)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    result = edit(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config if result is None else result))


def edit_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(folder / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE))


def test_the_unbroken_fixture_loads(good: Path) -> None:
    model = load_model(good, "lm", 1)
    request = InferRequest("lm", [0, 4, 5])
    np.testing.assert_array_equal(model.reference(request), lstm_token_lm().reference(request))


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_a_missing_file_is_named(good: Path, missing: str) -> None:
    (good / missing).unlink()
    assert load_error(good) == f"lm/1: missing {missing}"


def test_a_directory_where_a_file_belongs_is_a_missing_file(good: Path) -> None:
    (good / WEIGHTS_FILE).unlink()
    (good / WEIGHTS_FILE).mkdir()
    assert load_error(good) == f"lm/1: missing {WEIGHTS_FILE}"


@pytest.mark.parametrize(
    "text",
    ["", "{family: lstm}", '{"family": "lstm",', "\xff\xfe not text"],
    ids=["zero-bytes", "unquoted", "truncated", "not-utf8"],
)
def test_a_config_that_is_not_json_is_named(good: Path, text: str) -> None:
    (good / CONFIG_FILE).write_bytes(text.encode("latin-1"))
    message = load_error(good)
    assert message.startswith(f"lm/1/{CONFIG_FILE}: not valid JSON"), message


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "list"), ("lstm", "str"), (3, "int"), (None, "NoneType")]
)
def test_a_config_that_is_not_an_object_is_named(good: Path, value: Any, kind: str) -> None:
    (good / CONFIG_FILE).write_text(json.dumps(value))
    assert load_error(good) == f"lm/1/{CONFIG_FILE}: expected a JSON object, got {kind}"


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update(changes)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def drop(config: dict[str, Any]) -> None:
        del config[key]

    return drop


SEQ2SEQ = {
    "family": "seq2seq",
    "cell": "gru",
    "hidden_size": 6,
    "source_vocab_size": 9,
    "target_vocab_size": 7,
    "bos": 0,
    "eos": 1,
}

BAD_CONFIGS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    (
        "unknown-family",
        _set(family="transformer"),
        "'family' must be one of ['lstm', 'gru', 'seq2seq', 'treelstm'], got 'transformer'",
    ),
    ("no-family", _drop("family"), "'family' must be one of"),
    ("missing-hidden-size", _drop("hidden_size"), "'hidden_size' is required"),
    ("string-size", _set(hidden_size="8"), "'hidden_size' must be an integer >= 1, got '8'"),
    ("float-size", _set(hidden_size=8.0), "'hidden_size' must be an integer >= 1, got 8.0"),
    ("bool-layers", _set(num_layers=True), "'num_layers' must be an integer >= 1, got True"),
    ("negative-layers", _set(num_layers=-1), "'num_layers' must be an integer >= 1, got -1"),
    ("zero-length", _set(max_input_length=0), "'max_input_length' must be an integer >= 1"),
    (
        "tokens-and-vectors",
        _set(input_dim=3),
        "give exactly one of 'vocab_size' (tokens) or 'input_dim' (vectors)",
    ),
    ("unknown-field", _set(dropout=0.1), "unknown field 'dropout'"),
    ("vocabulary-not-strings", _set(vocabulary=[1, 2]), "'vocabulary' must be a list of strings"),
    ("vocabulary-not-list", _set(vocabulary="abc"), "'vocabulary' must be a list of strings"),
    ("short-vocabulary", _set(vocabulary=words(3)), "vocabulary has 3 entries, not 6"),
    (
        "long-output-vocabulary",
        _set(output_vocabulary=words(9)),
        "output_vocabulary has 9 entries, not 6",
    ),
    (
        "max-batch-unknown-cell",
        _set(max_batch={"decoder": 2}),
        "max_batch: no cell type 'decoder' in a lstm model (it has ['step'])",
    ),
    (
        "max-batch-zero",
        _set(max_batch={"step": 0}),
        "max_batch['step'] must be an integer >= 1, got 0",
    ),
    ("max-batch-not-object", _set(max_batch=[4]), "'max_batch' must be an object"),
    (
        "bos-outside-target-vocabulary",
        lambda _: {**SEQ2SEQ, "bos": 7},
        "bos 7 is outside the target vocabulary [0, 7)",
    ),
    (
        "eos-negative",
        lambda _: {**SEQ2SEQ, "eos": -1},
        "'eos' must be an integer >= 0, got -1",
    ),
    (
        "seq2seq-unknown-cell",
        lambda _: {**SEQ2SEQ, "cell": "rnn"},
        "'cell' must be one of ['lstm', 'gru'], got 'rnn'",
    ),
    (
        "seq2seq-max-batch-step",
        lambda _: {**SEQ2SEQ, "max_batch": {"step": 2}},
        "no cell type 'step' in a seq2seq model (it has ['decoder', 'encoder'])",
    ),
    (
        "treelstm-missing-classes",
        lambda _: {"family": "treelstm", "vocab_size": 5, "hidden_size": 4},
        "'num_classes' is required",
    ),
]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [pytest.param(edit, problem, id=name) for name, edit, problem in BAD_CONFIGS],
)
def test_a_bad_config_names_the_folder_file_and_field(
    good: Path, edit: Callable[[dict[str, Any]], Any], problem: str
) -> None:
    edit_config(good, edit)
    message = load_error(good)
    assert message.startswith(f"lm/1/{CONFIG_FILE}: "), message
    assert problem in message


def test_a_config_too_big_to_build_is_a_load_error_and_the_rest_still_load(
    tmp_path: Path,
) -> None:
    """A size no tensor can hold (here 2**62) fails while the model is built, before its
    weights are read (torch raises TypeError or RuntimeError there): it must fail that one
    folder, like any other bad config, not ``load_all`` and with it the server's start."""
    save_model(lstm_token_lm("fine", version=1), tmp_path)
    huge = save_model(lstm_token_lm("huge", version=1), tmp_path)
    edit_config(huge, _set(hidden_size=2**62))

    models, failed = ModelRepository(tmp_path).load_all()

    assert [m.key for m in models] == ["fine@1"]
    assert list(failed) == ["huge@1"]
    assert failed["huge@1"].startswith("huge/1/config.json: "), failed["huge@1"]


# ---- bad weights -------------------------------------------------------------------------


def test_a_missing_tensor_is_named_with_the_count(good: Path) -> None:
    def drop(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["step.proj.bias"]
        del tensors["step.rnn.bias_hh_l1"]

    edit_weights(good, drop)
    assert load_error(good) == (f"lm/1/{WEIGHTS_FILE}: missing tensor 'step.proj.bias' (2 missing)")


def test_an_extra_tensor_is_named(good: Path) -> None:
    edit_weights(good, lambda t: t.update({"step.rnn.weight_ih_l2": torch.zeros(32, 8)}))
    assert load_error(good) == (
        f"lm/1/{WEIGHTS_FILE}: unexpected tensor 'step.rnn.weight_ih_l2' for this config"
    )


def test_a_misshapen_tensor_shows_both_shapes(good: Path) -> None:
    edit_weights(good, lambda t: t.update({"step.proj.weight": torch.zeros(6, 9)}))
    assert load_error(good) == (
        f"lm/1/{WEIGHTS_FILE}: tensor 'step.proj.weight' has shape [6, 9], "
        "the config implies [6, 8]"
    )


def test_a_transposed_tensor_is_misshapen(good: Path) -> None:
    edit_weights(
        good,
        lambda t: t.update({"step.rnn.weight_ih_l0": t["step.rnn.weight_ih_l0"].T.contiguous()}),
    )
    message = load_error(good)
    assert "'step.rnn.weight_ih_l0' has shape [5, 32], the config implies [32, 5]" in message


def test_weights_that_disagree_with_the_config_are_misshapen(good: Path) -> None:
    """The config says 8 hidden units, but the weights are for 12."""
    edit_config(good, _set(hidden_size=12))
    message = load_error(good)
    assert message.startswith(f"lm/1/{WEIGHTS_FILE}: tensor "), message
    assert "the config implies" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_named(good: Path, bad: float) -> None:
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["step.rnn.weight_hh_l1"][3, 2] = bad

    edit_weights(good, poison)
    assert load_error(good) == (
        f"lm/1/{WEIGHTS_FILE}: tensor 'step.rnn.weight_hh_l1' contains NaN or Inf"
    )


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_a_non_float_tensor_is_named(good: Path, dtype: torch.dtype) -> None:
    edit_weights(good, lambda t: t.update({"step.proj.bias": torch.ones(6, dtype=dtype)}))
    assert load_error(good) == (
        f"lm/1/{WEIGHTS_FILE}: tensor 'step.proj.bias' is {dtype}, not floating point"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load_as_float32(good: Path, dtype: torch.dtype) -> None:
    original = load_file(str(good / WEIGHTS_FILE))
    edit_weights(good, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    model = load_model(good, "lm", 1)
    for key, tensor in model_state_dict(model).items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, original[key].to(dtype).float()), key


def _truncate_header(data: bytes) -> bytes:
    return data[:20]


def _truncate_data(data: bytes) -> bytes:
    return data[: len(data) - 16]


def _garbage(data: bytes) -> bytes:
    return bytes(range(256)) * 4


def _bad_header_json(data: bytes) -> bytes:
    return struct.pack("<Q", 8) + b"{not js}"


def _empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize(
    "corrupt", [_truncate_header, _truncate_data, _garbage, _bad_header_json, _empty]
)
def test_a_corrupt_weights_file_is_named(good: Path, corrupt: Callable[[bytes], bytes]) -> None:
    path = good / WEIGHTS_FILE
    path.write_bytes(corrupt(path.read_bytes()))
    message = load_error(good)
    assert message.startswith(f"lm/1/{WEIGHTS_FILE}: not a readable safetensors file ("), message


def test_a_pickle_under_the_safetensors_name_is_never_unpickled(good: Path) -> None:
    marker = good.parent / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))

    torch.save({"step.proj.bias": Payload()}, good / WEIGHTS_FILE)
    assert pickle_or_zip((good / WEIGHTS_FILE).read_bytes())
    message = load_error(good)
    assert message.startswith(f"lm/1/{WEIGHTS_FILE}: not a readable safetensors file"), message
    assert not marker.exists()


# ---- the repository: versions and policies ------------------------------------------------


def make_versions(root: Path, name: str, *versions: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for v in versions:
        (root / name / v).mkdir(parents=True)


def write_policy(root: Path, name: str, policy: Any) -> None:
    (root / name / POLICY_FILE).write_text(json.dumps({"version_policy": policy}))


def test_versions_ignores_files_odd_folders_and_version_zero(tmp_path: Path) -> None:
    make_versions(tmp_path, "lm", "1", "2", "10", "0", "latest", "v3", "1a", "-4", "1.5")
    (tmp_path / "lm" / "7").write_text("a file named like a version")
    (tmp_path / "lm" / POLICY_FILE).write_text('{"version_policy": "all"}')
    (tmp_path / "README.md").write_text("not a model")
    make_versions(tmp_path, ".hidden", "1")
    make_versions(tmp_path, "_private", "1")
    make_versions(tmp_path, "empty")
    repo = ModelRepository(tmp_path)

    assert repo.versions() == {
        "empty": {},
        "lm": {1: tmp_path / "lm" / "1", 2: tmp_path / "lm" / "2", 10: tmp_path / "lm" / "10"},
    }
    assert list(repo.model_versions("lm")) == [1, 2, 10]  # numerically, not as text
    assert repo.model_versions("empty") == {}
    assert repo.selected_versions("empty") == []


def test_a_repository_root_that_is_not_a_directory_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        ModelRepository(tmp_path / "file")
    with pytest.raises(ValueError, match="is not a directory"):
        ModelRepository(tmp_path / "absent")


def test_an_unknown_model_is_not_found(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        repo.model_versions("nope")
    assert info.value.code is Code.NOT_FOUND
    assert "'nope'" in info.value.message
    with pytest.raises(ModelNotFoundError):
        repo.load("nope", 1)


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        pytest.param(None, [3], id="no-policy-file"),
        pytest.param("latest", [3], id="latest"),
        pytest.param({"latest": 2}, [2, 3], id="latest-2"),
        pytest.param({"latest": 9}, [1, 2, 3], id="latest-more-than-exist"),
        pytest.param("all", [1, 2, 3], id="all"),
        pytest.param({"specific": [3, 1]}, [1, 3], id="specific"),
        pytest.param({"specific": [1, 7]}, [1], id="specific-one-absent"),
        pytest.param({"specific": [7]}, [], id="specific-none-on-disk"),
    ],
)
def test_version_policy_selects(tmp_path: Path, policy: Any, selected: list[int]) -> None:
    make_versions(tmp_path, "lm", "1", "2", "3")
    if policy is not None:
        write_policy(tmp_path, "lm", policy)
    assert ModelRepository(tmp_path).selected_versions("lm") == selected


def test_version_policy_parse_values() -> None:
    assert VersionPolicy.parse("latest", "x") == VersionPolicy()
    assert VersionPolicy.parse(None, "x") == VersionPolicy("latest", num_versions=1)
    assert VersionPolicy.parse({"latest": 4}, "x") == VersionPolicy("latest", num_versions=4)
    assert VersionPolicy.parse("all", "x") == VersionPolicy("all")
    assert VersionPolicy.parse({"specific": [3, 1, 3]}, "x") == VersionPolicy(
        "specific", versions=(1, 3)
    )


@pytest.mark.parametrize(
    "policy",
    [
        "newest",
        "ALL",
        3,
        [1, 3],
        {"latest": 0},
        {"latest": -1},
        {"latest": True},
        {"latest": "2"},
        {"specific": []},
        {"specific": [0]},
        {"specific": ["1"]},
        {"specific": [1.0]},
        {"specific": 1},
        {"latest": 1, "specific": [1]},
        {"oldest": 1},
    ],
)
def test_an_invalid_policy_is_a_load_error_naming_the_file_and_value(
    tmp_path: Path, policy: Any
) -> None:
    make_versions(tmp_path, "lm", "1")
    write_policy(tmp_path, "lm", policy)
    with pytest.raises(ModelLoadError) as info:
        ModelRepository(tmp_path).selected_versions("lm")
    message = info.value.message
    assert message.startswith(f"lm/{POLICY_FILE}: version_policy must be "), message
    assert message.endswith(f"got {policy!r}")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not valid JSON"),
        ("version_policy: all", "not valid JSON"),
        ('["all"]', 'expected {"version_policy": ...}'),
        ('{"version_policy": "all", "extra": 1}', 'expected {"version_policy": ...}'),
        ('{"policy": "all"}', 'expected {"version_policy": ...}'),
    ],
)
def test_a_bad_policy_file_is_a_load_error(tmp_path: Path, text: str, problem: str) -> None:
    make_versions(tmp_path, "lm", "1")
    (tmp_path / "lm" / POLICY_FILE).write_text(text)
    with pytest.raises(ModelLoadError) as info:
        ModelRepository(tmp_path).policy("lm")
    assert info.value.message.startswith(f"lm/{POLICY_FILE}: {problem}"), info.value.message


def test_load_reads_one_version_and_a_missing_version_is_not_found(tmp_path: Path) -> None:
    for version in (1, 2):
        save_model(lstm_token_lm(version=version, seed=version), tmp_path)
    repo = ModelRepository(tmp_path)
    request = InferRequest("lm", [2, 3, 4])
    for version in (1, 2):
        model = repo.load("lm", version)
        assert model.key == f"lm@{version}"
        np.testing.assert_array_equal(
            model.reference(request), lstm_token_lm(seed=version).reference(request)
        )
    with pytest.raises(ModelNotFoundError) as info:
        repo.load("lm", 3)
    assert info.value.message == "model 'lm' has no version 3 in the repository"


def populate(root: Path) -> None:
    """good (v1, v2; policy all), mixed (v1 good, v2 without weights; policy all),
    broken (v1 with a bad config), badpolicy (a policy file that is not JSON), latest
    (v1, v2; default policy: only v2 is loaded)."""
    for version in (1, 2):
        save_model(lstm_token_lm("good", version=version, seed=version), root)
        save_model(lstm_token_lm("latest", version=version), root)
    write_policy(root, "good", "all")
    save_model(gru_vectors(), root)  # "vec" v1
    save_model(lstm_token_lm("mixed", version=1), root)
    (save_model(lstm_token_lm("mixed", version=2), root) / WEIGHTS_FILE).unlink()
    write_policy(root, "mixed", "all")
    edit_config(save_model(lstm_token_lm("broken", version=1), root), _set(family="cnn"))
    save_model(lstm_token_lm("badpolicy", version=1), root)
    (root / "badpolicy" / POLICY_FILE).write_text("{")


def test_load_all_loads_the_good_and_reports_each_bad_one(tmp_path: Path) -> None:
    populate(tmp_path)

    models, failed = ModelRepository(tmp_path).load_all()

    assert sorted(m.key for m in models) == ["good@1", "good@2", "latest@2", "mixed@1", "vec@1"]
    assert sorted(failed) == ["badpolicy", "broken@1", "mixed@2"]
    assert failed["mixed@2"] == f"mixed/2: missing {WEIGHTS_FILE}"
    assert failed["broken@1"].startswith("broken/1/config.json: 'family' must be one of")
    assert failed["badpolicy"].startswith(f"badpolicy/{POLICY_FILE}: not valid JSON")
    request = InferRequest("good", [1, 2])
    by_key = {m.key: m for m in models}
    np.testing.assert_array_equal(
        by_key["good@2"].reference(request), lstm_token_lm(seed=2).reference(request)
    )


def test_load_all_of_an_empty_repository_is_empty(tmp_path: Path) -> None:
    assert ModelRepository(tmp_path).load_all() == ([], {})


# ---- the manager, without an engine -----------------------------------------------------


def test_manager_index_lists_available_and_unavailable_with_reasons(tmp_path: Path) -> None:
    populate(tmp_path)
    manager = ModelManager(
        ModelRepository(tmp_path),
        builtins={"builtin-lm": lambda: recurrent_model("builtin-lm", "gru", hidden_size=4)},
    )

    models = manager.initial_models()
    index = manager.index()

    assert sorted(m.key for m in models) == [
        "good@1",
        "good@2",
        "latest@2",
        "mixed@1",
        "vec@1",
    ]
    unavailable = {(s.name, s.version): s.reason for s in index if s.state == UNAVAILABLE}
    assert set(unavailable) == {("badpolicy", 0), ("broken", 1), ("mixed", 2)}
    assert unavailable[("mixed", 2)] == f"mixed/2: missing {WEIGHTS_FILE}"
    assert "'family' must be one of" in unavailable[("broken", 1)]
    assert "not valid JSON" in unavailable[("badpolicy", 0)]
    available = [(s.name, s.version) for s in index if s.state == AVAILABLE]
    assert available == [
        ("badpolicy", 1),
        ("builtin-lm", 1),
        ("good", 1),
        ("good", 2),
        ("latest", 1),
        ("latest", 2),
        ("mixed", 1),
        ("vec", 1),
    ]
    assert all(s.reason == "" for s in index if s.state == AVAILABLE)
    assert [(s.name, s.version) for s in index] == sorted((s.name, s.version) for s in index)


def test_manager_initial_models_by_name_loads_only_those(tmp_path: Path) -> None:
    populate(tmp_path)
    manager = ModelManager(ModelRepository(tmp_path))
    models = manager.initial_models(["vec", "mixed"])
    assert sorted(m.key for m in models) == ["mixed@1", "vec@1"]
    assert [s for s in manager.index() if s.state == UNAVAILABLE] == [
        VersionState("mixed", 2, UNAVAILABLE, f"mixed/2: missing {WEIGHTS_FILE}")
    ]


def test_manager_check_names_rejects_an_unknown_name(tmp_path: Path) -> None:
    populate(tmp_path)
    manager = ModelManager(ModelRepository(tmp_path), builtins={"b": lambda: gru_vectors()})
    manager.check_names(["good", "b", "broken"])  # on disk counts as known, loadable or not
    with pytest.raises(ValueError, match=r"models: unknown 'goood'; known: b, badpolicy, "):
        manager.check_names(["good", "goood"])
    with pytest.raises(ValueError, match="unknown 'nope'"):
        manager.initial_models(["nope"])
    with pytest.raises(ValueError, match=r"unknown 'x'; known: \(none\)"):
        ModelManager().check_names(["x"])
