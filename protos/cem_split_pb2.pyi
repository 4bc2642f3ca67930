from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    INT8: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
INT8: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scale", "offset")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    offset: float
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model_id", "request_id", "features", "sample_ids")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    request_id: str
    features: Tensor
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., request_id: _Optional[str] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., sample_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model_id", "request_id", "logits", "predictions", "served_batch_size")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    request_id: str
    logits: Tensor
    predictions: _containers.RepeatedScalarFieldContainer[int]
    served_batch_size: int
    def __init__(self, model_id: _Optional[str] = ..., request_id: _Optional[str] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., predictions: _Optional[_Iterable[int]] = ..., served_batch_size: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "arch", "cut_layer", "feature_shape", "accepted_dtypes", "noise_std", "class_names", "dataset", "max_batch", "max_message_bytes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CUT_LAYER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DTYPES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    arch: str
    cut_layer: int
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    accepted_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    noise_std: float
    class_names: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    max_batch: int
    max_message_bytes: int
    def __init__(self, model_id: _Optional[str] = ..., arch: _Optional[str] = ..., cut_layer: _Optional[int] = ..., feature_shape: _Optional[_Iterable[int]] = ..., accepted_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., noise_std: _Optional[float] = ..., class_names: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...
