"""Adding an attention variant (CONTRIBUTING.md): a toy variant registered from this file
runs through MultiHeadAttention, an encoder, a decoder with generation, `effjax bench`
and `effjax train`, with no edit anywhere in effjax."""

import json
import math
import textwrap

import jax
import numpy as np
import pytest

import effjax.attention as ea
from effjax.attention import benchspec, registry
from effjax.cli import main
from effjax.layers import DenseCore, MultiHeadAttention
from effjax.models import DecoderConfig, DecoderLM, Encoder, EncoderConfig, generate

NAME = "test_sharp_dense"


# 1. The pure function: dense attention with logits sharpened by a factor.
def sharp_attention(query, key, value, *, sharpness=2.0, **kwargs):
    scale = sharpness / math.sqrt(query.shape[-1])
    return ea.dot_product_attention(query, key, value, scale=scale, **kwargs)


# 2. Its core: the option with its default, and dense attention's decoding cache.
class SharpCore(DenseCore):
    function = staticmethod(sharp_attention)
    sharpness: float = 2.0


# 3. Its registration, with its benchmark spec.
SPEC = benchspec.BenchSpec(
    flops=lambda s, o: benchspec.pairs_flops(s, s.seq_len),
    summary=benchspec.fixed(sharpness=2.0),
)


@pytest.fixture(scope="module", autouse=True)
def toy_variant():
    saved = dict(registry._REGISTRY)
    registry.register(NAME, sharp_attention, core=SharpCore, bench=SPEC)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def twice_scaled(head_dim):
    """The same thing said with dense attention's own option."""
    return {"scale": 2.0 / math.sqrt(head_dim)}


def test_layer_encoder_and_decoder_with_generation():
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    toy = MultiHeadAttention(num_heads=2, attention=NAME, is_causal=True)
    dense = MultiHeadAttention(
        num_heads=2, attention="dense", attention_options=twice_scaled(4), is_causal=True
    )
    variables = toy.init(jax.random.key(1), x)
    np.testing.assert_allclose(toy.apply(variables, x), dense.apply(variables, x), atol=1e-6)
    assert not np.allclose(toy.apply(variables, x), dense.clone(attention_options={}).apply(
        variables, x), atol=1e-3)  # fmt: skip

    sizes = dict(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    ids = jax.random.randint(jax.random.key(2), (2, 6), 0, 20)
    encoder = Encoder(EncoderConfig(**sizes, attention=NAME))
    enc_vars = encoder.init(jax.random.key(3), ids)
    reference = Encoder(
        encoder.config.replace(attention="dense", attention_options=twice_scaled(4))
    )
    np.testing.assert_allclose(
        encoder.apply(enc_vars, ids), reference.apply(enc_vars, ids), atol=1e-5
    )

    decoder = DecoderLM(DecoderConfig(**sizes, max_position_embeddings=12, attention=NAME))
    dec_vars = decoder.init(jax.random.key(4), ids)
    reference = DecoderLM(
        decoder.config.replace(attention="dense", attention_options=twice_scaled(4))
    )
    np.testing.assert_array_equal(
        generate(decoder, dec_vars, ids, max_new_tokens=3),
        generate(reference, dec_vars, ids, max_new_tokens=3),
    )


def test_effjax_bench_picks_up_the_variant_and_its_spec(tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--variants", NAME, "--seq-lens", "16", "--mode", "fwd", "--quick"]
    # --training-layers 0: the deep-model training rows do not involve the variant
    # (tests/bench covers them) and would cost minutes here.
    sizes = ["--heads", "2", "--head-dim", "4", "--layers", "--training-layers", "0"]
    assert main([*argv, *sizes, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["variant"] == NAME]
    assert {r["kind"] for r in mine} == {"attention", "layer"}
    attention = next(r for r in mine if r["kind"] == "attention")
    assert attention["status"] == "ok" and attention["options"] == {"sharpness": 2.0}
    assert attention["flops"] == benchspec.pairs_flops(benchspec.Shape(1, 16, 2, 4), 16)


def test_effjax_train_runs_a_config_that_names_the_variant(tmp_path):
    config = tmp_path / "toy.py"
    config.write_text(
        textwrap.dedent(f"""
        from effjax.data.listops import ListOpsSpec
        from effjax.models import EncoderConfig
        from effjax.train.config import DataConfig, ExperimentConfig, RunConfig

        config = ExperimentConfig(
            name="toy",
            data=DataConfig(
                kind="listops",
                listops=ListOpsSpec(min_length=5, max_length=12, max_depth=2, max_args=3,
                                    num_train=16, num_validation=8, num_test=8),
                cache_dir="{tmp_path}/data",
                max_length=16,
            ),
            model=EncoderConfig(vocab_size=17, hidden_size=8, num_layers=1, num_heads=2,
                                intermediate_size=16, max_position_embeddings=16,
                                attention="{NAME}"),
            run=RunConfig(batch_size=8, num_steps=2, log_every=1, eval_every=2,
                          checkpoint_every=2),
            num_classes=10,
        )
    """)
    )
    workdir = tmp_path / "run"
    assert main(["train", str(config), "--workdir", str(workdir), "--no-progress"]) == 0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["attention"] == NAME
    assert any("test/accuracy" in json.loads(line)
               for line in (workdir / "metrics.jsonl").read_text().splitlines())  # fmt: skip
