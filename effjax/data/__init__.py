"""Long-range tasks and text data: ListOps, synthetic tasks, text files, batching, and
consecutive language-modelling segments."""

from effjax.data.batching import BatchOrder, ClassificationData, bucket_length, pad_batch
from effjax.data.language_model import LanguageModelData
from effjax.data.listops import ListOpsSpec, load_listops
from effjax.data.synthetic import (
    associative_recall,
    copy_task,
    duplication_task,
    multi_query_recall,
    repeated_blocks,
)
from effjax.data.text import encode_bytes, load_text_classification, load_tokenizer

__all__ = [
    "BatchOrder",
    "ClassificationData",
    "LanguageModelData",
    "ListOpsSpec",
    "associative_recall",
    "bucket_length",
    "copy_task",
    "duplication_task",
    "encode_bytes",
    "load_listops",
    "load_text_classification",
    "load_tokenizer",
    "multi_query_recall",
    "pad_batch",
    "repeated_blocks",
]
