import pytest
import transformers

from effjax.models import DecoderConfig, EncoderConfig


def test_bert_config_sizes_carry_over():
    hf = transformers.BertConfig(
        vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
        intermediate_size=80, max_position_embeddings=128, type_vocab_size=3,
        layer_norm_eps=1e-7, hidden_act="relu", hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.3, pad_token_id=5,
    )  # fmt: skip
    cfg = EncoderConfig.from_hf_config(hf)
    got = (
        cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
        cfg.max_position_embeddings, cfg.type_vocab_size, cfg.layer_norm_eps, cfg.hidden_act,
        cfg.hidden_dropout_rate, cfg.attention_dropout_rate, cfg.pad_token_id,
    )  # fmt: skip
    assert got == (99, 48, 3, 6, 80, 128, 3, 1e-7, "relu", 0.2, 0.3, 5)
    assert (cfg.attention, dict(cfg.attention_options), cfg.position_offset) == ("dense", {}, 0)
    assert cfg.max_length == 128


def test_roberta_positions_start_after_padding_idx():
    cfg = EncoderConfig.from_hf_config(
        transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    )
    assert (cfg.position_offset, cfg.max_length, cfg.model_type) == (2, 512, "roberta")
    assert cfg.counts_positions_from_tokens


def test_bigbird_block_sparse_settings_carry_over():
    cfg = EncoderConfig.from_hf_config(
        transformers.BigBirdConfig(block_size=16, num_random_blocks=2, max_position_embeddings=4096)
    )
    assert cfg.attention == "block_sparse"
    assert dict(cfg.attention_options) == {"block_size": 16, "num_random_blocks": 2}
    assert cfg.max_length == 4096
    full = transformers.BigBirdConfig(attention_type="original_full")
    assert EncoderConfig.from_hf_config(full).attention == "dense"


def test_longformer_window_is_half_the_attention_window_each_side():
    cfg = EncoderConfig.from_hf_config(
        transformers.LongformerConfig(attention_window=256, num_hidden_layers=2)
    )
    assert (cfg.attention, dict(cfg.attention_options)) == (
        "global_local",
        {"window_size": 128, "global_projections": True},
    )
    assert cfg.position_offset == 2  # pad_token_id=1 as RoBERTa

    per_layer = EncoderConfig.from_hf_config(
        transformers.LongformerConfig(attention_window=[32, 64], num_hidden_layers=2),
        attention="local",
    )
    assert per_layer.attention == "local"
    assert [dict(per_layer.options_for_layer(i)) for i in range(2)] == [
        {"window_size": 16},
        {"window_size": 32},
    ]


def test_override_options_merge_over_translated_ones():
    cfg = EncoderConfig.from_hf_config(
        transformers.BigBirdConfig(block_size=16), attention_options={"num_random_blocks": 0}
    )
    assert dict(cfg.attention_options) == {"block_size": 16, "num_random_blocks": 0}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size=30 must be divisible by num_heads=4"),
        ({"num_kv_heads": 3}, "num_kv_heads=3 must divide num_heads=4"),
        ({"hidden_act": "tanhh"}, "hidden_act='tanhh' is not supported"),
        ({"num_layers": 0}, "num_layers must be positive"),
        ({"layer_attention_options": [{}]}, "layer_attention_options has 1 entries, num_layers=2"),
        ({"max_position_embeddings": 2, "position_offset": 2}, "leaves no positions"),
    ],
)
def test_bad_configs_raise(changes, message):
    base = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**{**base, **changes})


def test_decoder_config_checks_sizes_too():
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        DecoderConfig(hidden_size=32, num_heads=4, num_kv_heads=3)
