"""Model-size reduction: distillation, pruning and int8 quantization of parameter pytrees.

Everything that returns new parameters is a pure function; training pieces are
optax transformations or pure ``(state, batch)`` steps that jit and shard.
"""

from effjax.compress.distill import (
    DistillState,
    attention_transfer_loss,
    distill_step,
    every_other_layer,
    hidden_cosine_loss,
    hidden_mse_loss,
    init_distill_state,
    init_student_from_teacher,
    kd_loss,
    make_distill_step,
    value_relation_loss,
)
from effjax.compress.prune import (
    PruneState,
    apply_masks,
    init_prune_state,
    keep_masks,
    magnitude_masks,
    make_prune_step,
    movement_scores,
    nm_masks,
    polynomial_sparsity_schedule,
    prune_step,
    score_masks,
    sparsity_of,
)
from effjax.compress.quantize import (
    calibrate_scale,
    dequantize_params,
    fake_quant,
    fake_quant_params,
    kernel_output_axes,
    kernel_stacked_axes,
    quantize_params,
)
from effjax.compress.structured import (
    head_importance,
    keep_top,
    mask_heads,
    mask_neurons,
    neuron_importance,
    remove_heads,
    remove_neurons,
)
from effjax.layers.quantized import QuantizedArray, QuantizedDense

__all__ = [
    "DistillState",
    "PruneState",
    "QuantizedArray",
    "QuantizedDense",
    "apply_masks",
    "attention_transfer_loss",
    "calibrate_scale",
    "dequantize_params",
    "distill_step",
    "every_other_layer",
    "fake_quant",
    "fake_quant_params",
    "head_importance",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "init_distill_state",
    "init_prune_state",
    "init_student_from_teacher",
    "kd_loss",
    "keep_masks",
    "keep_top",
    "kernel_output_axes",
    "kernel_stacked_axes",
    "magnitude_masks",
    "make_distill_step",
    "make_prune_step",
    "mask_heads",
    "mask_neurons",
    "movement_scores",
    "neuron_importance",
    "nm_masks",
    "polynomial_sparsity_schedule",
    "prune_step",
    "quantize_params",
    "remove_heads",
    "remove_neurons",
    "score_masks",
    "sparsity_of",
    "value_relation_loss",
]
