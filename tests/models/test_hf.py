import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from safetensors.numpy import load_file, save_file

from effjax.models import (
    Encoder,
    EncoderForMaskedLM,
    export_hf_encoder,
    load_encoder_config,
    load_hf_encoder,
    load_hf_masked_lm,
    sentence_embedding,
)
from tests.models.conftest import random_ids, right_padding, tiny_config


def torch_reference_pooling(hidden, mask):
    """sentence-transformers' Pooling(mean) + Normalize, written out in numpy."""
    m = mask[..., None].astype(np.float64)
    mean = (hidden * m).sum(1) / m.sum(1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def minilm_outputs(minilm, minilm_batch):
    model, variables = minilm
    ids, mask = jnp.asarray(minilm_batch["input_ids"]), jnp.asarray(minilm_batch["attention_mask"])
    return np.asarray(jax.jit(model.apply)(variables, ids, mask))


def test_minilm_matches_pytorch_bert(minilm_path, minilm_batch, minilm_outputs):
    torch = pytest.importorskip("torch")
    import transformers

    reference = transformers.BertModel.from_pretrained(str(minilm_path)).eval()
    ids, mask = minilm_batch["input_ids"], minilm_batch["attention_mask"]
    assert (mask == 0).any()  # the batch has padding
    with torch.no_grad():
        want = reference(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(minilm_outputs, want, atol=1e-4, rtol=0)

    got = np.asarray(sentence_embedding(jnp.asarray(minilm_outputs), jnp.asarray(mask)))
    cosine = (got * torch_reference_pooling(want, mask)).sum(-1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)


def test_minilm_loads_with_a_registered_variant_by_name(minilm_path, minilm_batch, minilm_outputs):
    # The stand-in sees every key when its window covers the sentence: equal to dense.
    model, variables = load_hf_encoder(
        minilm_path, attention="test_windowed_dense", attention_options={"window_size": 64}
    )
    assert (model.config.attention, dict(model.config.attention_options)) == (
        "test_windowed_dense",
        {"window_size": 64},
    )
    ids, mask = minilm_batch["input_ids"], minilm_batch["attention_mask"]
    got = jax.jit(model.apply)(variables, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(got, minilm_outputs, atol=1e-5)


def test_minilm_embeddings_rank_related_sentences_closer(minilm_outputs, minilm_batch):
    mask = jnp.asarray(minilm_batch["attention_mask"])
    e = np.asarray(sentence_embedding(jnp.asarray(minilm_outputs), mask))
    sims = e @ e.T
    # Sentence 1 (JAX) and 2 (sparse attention for transformers) are both about ML;
    # sentence 0 (the fox) is not.
    assert sims[1, 2] > sims[0, 1] and sims[1, 2] > sims[0, 2]


def test_export_round_trip_is_exact_and_readable_by_transformers(minilm, tmp_path):
    model, variables = minilm
    out = export_hf_encoder(model, variables, tmp_path / "minilm")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    again, variables2 = load_hf_encoder(out)
    assert again.config == model.config
    jax.tree.map(np.testing.assert_array_equal, variables2, variables)
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("bert", ["BertModel"])
    assert "effjax_attention" not in config


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_tiny_masked_lm_export_matches_pytorch(model_type, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    cfg = tiny_config(
        model_type=model_type,
        position_offset=2 if model_type == "roberta" else 0,
        pad_token_id=1 if model_type == "roberta" else 0,
        type_vocab_size=1 if model_type == "roberta" else 2,
    )
    model = EncoderForMaskedLM(cfg)
    ids = random_ids(cfg, 2, 10)
    mask = right_padding([10, 6], 10)
    ids = jnp.where(mask == 1, ids, cfg.pad_token_id)
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    bias = jax.random.normal(jax.random.key(1), (cfg.vocab_size,))
    variables["params"]["mlm_head"]["bias"] = bias  # a nonzero bias, so its place is tested
    logits = np.asarray(jax.jit(model.apply)(variables, ids, mask))

    out = export_hf_encoder(model, variables, tmp_path / model_type)
    family = {"bert": transformers.BertForMaskedLM, "roberta": transformers.RobertaForMaskedLM}
    reference = family[model_type].from_pretrained(str(out)).eval()
    with torch.no_grad():
        want = reference(
            input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask))
        ).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)

    _, loaded = load_hf_masked_lm(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_attention_choice_survives_export(minilm, tmp_path):
    model, variables = minilm
    swapped = Encoder(model.config.replace(attention="local", attention_options={"window_size": 8}))
    out = export_hf_encoder(swapped, variables, tmp_path / "local")
    cfg = load_encoder_config(out)
    assert (cfg.attention, dict(cfg.attention_options)) == ("local", {"window_size": 8})
    assert load_encoder_config(out, attention="dense").attention == "dense"


def test_interrupted_export_keeps_the_previous_directory(minilm, tmp_path, monkeypatch):
    model, variables = minilm
    target = export_hf_encoder(model, variables, tmp_path / "model")
    before = (target / "model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    changed = jax.tree.map(lambda x: x + 1.0, variables)
    with pytest.raises(KeyboardInterrupt):
        export_hf_encoder(model, changed, target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md", ".git*"))
    return dst


def test_missing_files_are_named(minilm_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_encoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").write_text((minilm_path / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors \(found pytorch_model.bin"):
        load_hf_encoder(tmp_path)


def test_missing_and_misshaped_tensors_are_named(minilm_path, tmp_path):
    tensors = load_file(str(minilm_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((minilm_path / "config.json").read_text())
    name = "encoder.layer.3.attention.self.key.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"missing tensors \['{name}'\]"):
        load_hf_encoder(tmp_path)
    tensors[name] = tensors[name][:, :100]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"'{name}' has shape \(384, 100\), config.json implies"):
        load_hf_encoder(tmp_path)


def test_missing_mlm_head_is_named(minilm_path):
    # all-MiniLM-L6-v2 ships the bare BertModel, without BERT's masked-LM head.
    with pytest.raises(ValueError, match=r"missing tensors \['cls.predictions.transform.dense"):
        load_hf_masked_lm(minilm_path)


def test_unknown_attention_fails_at_load_naming_the_variants(minilm_path):
    with pytest.raises(ValueError, match=r"unknown attention 'nosuch'; registered: .*local"):
        load_hf_encoder(minilm_path, attention="nosuch")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['window'\]"):
        load_hf_encoder(minilm_path, attention="local", attention_options={"window": 4})


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type='gpt2'"):
        load_hf_encoder(tmp_path)


def test_sentence_embedding_ignores_padding_and_checks_shapes():
    hidden = jnp.array([[[1.0, 0.0], [3.0, 4.0], [50.0, -7.0]]])
    got = sentence_embedding(hidden, jnp.array([[1, 1, 0]]), normalize=False)
    np.testing.assert_allclose(got, [[2.0, 2.0]])
    with pytest.raises(ValueError, match=r"attention_mask \[B, T\]; got \(1, 3, 2\) and \(1, 2\)"):
        sentence_embedding(hidden, jnp.ones((1, 2)))


def test_bigbird_checkpoint_loads_and_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    hf_config = transformers.BigBirdConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=32, attention_type="original_full",
        sep_token_id=2, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.BigBirdModel(hf_config).eval()
    reference.save_pretrained(tmp_path)
    model, variables = load_hf_encoder(tmp_path)
    assert (model.config.model_type, model.config.attention) == ("big_bird", "dense")
    ids = np.asarray(random_ids(model.config, 2, 9))
    mask = np.asarray(right_padding([9, 5], 9))
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    got = jax.jit(model.apply)(variables, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(got, want.last_hidden_state.numpy(), atol=1e-5)
    pooled = model.apply(variables, got, method="pooled_output")
    np.testing.assert_allclose(pooled, want.pooler_output.numpy(), atol=1e-5)

    # Export: transformers reads it back as the same BigBird.
    out = export_hf_encoder(model, variables, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["attention_type"] == "original_full"
    with torch.no_grad():
        again = transformers.BigBirdModel.from_pretrained(str(out)).eval()
        again = again(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(again.last_hidden_state.numpy(), want.last_hidden_state, atol=1e-6)

    # A block-sparse BigBird config selects effjax's block_sparse with its settings.
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(attention_type="block_sparse", block_size=8, num_random_blocks=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = load_encoder_config(tmp_path)
    assert (cfg.attention, dict(cfg.attention_options)) == (
        "block_sparse",
        {"block_size": 8, "num_random_blocks": 1},
    )


def test_longformer_checkpoint_matches_pytorch_with_global_tokens(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    hf_config = transformers.LongformerConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=40, attention_window=[4, 8],
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.LongformerModel(hf_config).eval()
    reference.save_pretrained(tmp_path)
    model, variables = load_hf_encoder(tmp_path)
    assert model.config.attention == "global_local"
    layer = variables["params"]["layer_0"]["attention"]
    # The separate global projections are loaded, and differ from the local ones.
    assert not np.allclose(layer["query_global"]["kernel"], layer["query"]["kernel"])

    ids = np.array(random_ids(model.config, 2, 13))  # odd length, not a window multiple
    mask = np.asarray(right_padding([13, 9], 13))
    ids[1, 9:] = hf_config.pad_token_id
    global_tokens = np.zeros((2, 13), np.int64)
    global_tokens[0, [0, 6]] = 1
    global_tokens[1, 0] = 1
    with torch.no_grad():
        want = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            global_attention_mask=torch.tensor(global_tokens),
        ).last_hidden_state.numpy()
    got = np.asarray(
        model.apply(
            variables, jnp.asarray(ids), jnp.asarray(mask), global_attention_mask=global_tokens
        )
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)

    # Export: transformers reads it back as the same Longformer (windows and global weights).
    out = export_hf_encoder(model, variables, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["attention_window"] == [4, 8]
    with torch.no_grad():
        again = transformers.LongformerModel.from_pretrained(str(out)).eval()
        again = again(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            global_attention_mask=torch.tensor(global_tokens),
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(again[real], want[real], atol=1e-6)
