"""ALBEF whose text encoder starts from a Hugging Face BERT (init.hf.text). The BERT's first
`cross_attention_from` layers are the text encoder; the later ones become the fusion layers,
whose cross-attention to the image starts fresh. The text tower takes its shape from the
directory (model.text.kind='hf') and data.tokenizer defaults to the directory's tokenizer:

    vlpjax data build synthetic_shapes --image_size 48 --data_dir data
    vlpjax train --config configs/albef_hf.py --workdir workdirs/albef_hf \\
        --config.init.hf.text=/models/bert-base-uncased
"""

from vlpjax.config import base_recipe


def get_config(arg=None):
    c = base_recipe(__file__, "albef_shapes").get_config(arg)
    # BERT-base has 12 layers: 6 text and 6 fusion, as in ALBEF. `:tiny` tests use 2-layer BERTs.
    c.model.text = dict(kind="hf", cross_attention_from=1 if arg == "tiny" else 6)
    return c
