"""Encoder and decoder models on any effjax attention variant, and Hugging Face checkpoints."""

from effjax.models.config import DecoderConfig, EncoderConfig
from effjax.models.decoder import DecoderLayer, DecoderLM, generate
from effjax.models.encoder import (
    Embeddings,
    Encoder,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderLayer,
    FeedForward,
    MaskedLMHead,
)
from effjax.models.hf import (
    export_hf_encoder,
    load_encoder_config,
    load_hf_encoder,
    load_hf_masked_lm,
    load_hf_tokenizer,
    sentence_embedding,
)
from effjax.models.positions import extend_position_embeddings

__all__ = [
    "DecoderConfig",
    "DecoderLM",
    "DecoderLayer",
    "Embeddings",
    "Encoder",
    "EncoderConfig",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "EncoderLayer",
    "FeedForward",
    "MaskedLMHead",
    "export_hf_encoder",
    "extend_position_embeddings",
    "generate",
    "load_encoder_config",
    "load_hf_encoder",
    "load_hf_masked_lm",
    "load_hf_tokenizer",
    "sentence_embedding",
]
