from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_COMPLETED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_COMPLETED: FinishReason
FINISH_REASON_LENGTH: FinishReason

class InferRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "id", "tokens", "vectors", "tree", "max_output_length", "priority", "top_k", "return_vectors")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    id: str
    tokens: TokenSequence
    vectors: VectorSequence
    tree: Tree
    max_output_length: int
    priority: int
    top_k: int
    return_vectors: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., tokens: _Optional[_Union[TokenSequence, _Mapping]] = ..., vectors: _Optional[_Union[VectorSequence, _Mapping]] = ..., tree: _Optional[_Union[Tree, _Mapping]] = ..., max_output_length: _Optional[int] = ..., priority: _Optional[int] = ..., top_k: _Optional[int] = ..., return_vectors: _Optional[bool] = ...) -> None: ...

class TokenSequence(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class VectorSequence(_message.Message):
    __slots__ = ("dim", "values")
    DIM_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    dim: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dim: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Tree(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[TreeNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[TreeNode, _Mapping]]] = ...) -> None: ...

class TreeNode(_message.Message):
    __slots__ = ("token", "children")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    token: int
    children: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token: _Optional[int] = ..., children: _Optional[_Iterable[int]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("index", "top_ids", "top_scores", "vector")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_SCORES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    index: int
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_scores: _containers.RepeatedScalarFieldContainer[float]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, index: _Optional[int] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_scores: _Optional[_Iterable[float]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("id", "model_name", "model_version", "steps", "finish_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_name: str
    model_version: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    finish_reason: FinishReason
    def __init__(self, id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ...) -> None: ...

class ModelMetadataRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class TensorMetadata(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class CellTypeMetadata(_message.Message):
    __slots__ = ("name", "max_batch")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_batch: int
    def __init__(self, name: _Optional[str] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ModelLimits(_message.Message):
    __slots__ = ("max_input_length", "max_output_length", "max_top_k", "vocab_size", "max_tree_depth")
    MAX_INPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_TREE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_input_length: int
    max_output_length: int
    max_top_k: int
    vocab_size: int
    max_tree_depth: int
    def __init__(self, max_input_length: _Optional[int] = ..., max_output_length: _Optional[int] = ..., max_top_k: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_tree_depth: _Optional[int] = ...) -> None: ...

class ModelMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "versions", "family", "inputs", "outputs", "limits", "cell_types", "input_vocabulary", "output_vocabulary")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CELL_TYPES_FIELD_NUMBER: _ClassVar[int]
    INPUT_VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    family: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    limits: ModelLimits
    cell_types: _containers.RepeatedCompositeFieldContainer[CellTypeMetadata]
    input_vocabulary: _containers.RepeatedScalarFieldContainer[str]
    output_vocabulary: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., family: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ..., limits: _Optional[_Union[ModelLimits, _Mapping]] = ..., cell_types: _Optional[_Iterable[_Union[CellTypeMetadata, _Mapping]]] = ..., input_vocabulary: _Optional[_Iterable[str]] = ..., output_vocabulary: _Optional[_Iterable[str]] = ...) -> None: ...

class ServerMetadataRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ServerMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "batching_mode", "devices", "max_live_requests", "max_receive_message_bytes", "models")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCHING_MODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    batching_mode: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    max_live_requests: int
    max_receive_message_bytes: int
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., batching_mode: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., max_live_requests: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ...) -> None: ...

class RepositoryIndexRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionState(_message.Message):
    __slots__ = ("name", "version", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RepositoryIndexResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelStatesResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ...) -> None: ...
