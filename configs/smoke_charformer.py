"""Charformer (Tay et al. 2021) on byte-level ListOps: the smoke ListOps expressions as
the bytes of their source text (``"[MAX 4 3 ]"``, at most 5 bytes a token, so 200 bytes
hold the smoke spec's 39 tokens), read by an encoder whose GBST front end scores
candidate subword blocks of 1-4 bytes, mixes them softly and mean-pools by 4 before the
layer, which then runs on 50 positions.

effjax train configs/smoke_charformer.py --workdir /tmp/effjax-smoke-charformer
"""

import dataclasses

from effjax.configs.smoke import config as smoke
from effjax.data.text import BYTE_VOCAB_SIZE

BYTES = 200

config = dataclasses.replace(
    smoke,
    name="smoke_charformer",
    data=dataclasses.replace(smoke.data, kind="listops_bytes", max_length=BYTES),
    model=smoke.model.replace(
        vocab_size=BYTE_VOCAB_SIZE,
        max_position_embeddings=BYTES,
        gbst_block_sizes=(1, 2, 3, 4),
        gbst_downsample_rate=4,
    ),
)
