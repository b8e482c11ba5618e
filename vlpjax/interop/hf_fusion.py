"""A fusion model (ALBEF / METER / ViLT / UNITER) for tools outside vlpjax: its unimodal text
encoder as a Hugging Face `BertModel`, everything else as safetensors named by vlpjax path.

The BertModel holds the text-only layers (for ALBEF, those before `cross_attention_from`: the
text encoder of its ITC). The cross-attention layers, the image tower, the fusion, the
projections and the heads go to `vlpjax_rest.safetensors` under their vlpjax parameter paths
('txt/layers/6/cross/query/kernel', kernels [in, out]); `name_map.json` lists both files' names.
"""

from __future__ import annotations

import numpy as np

from vlpjax.interop.hf import bert_weight_map
from vlpjax.interop.safetensors_io import flat_params
from vlpjax.interop.weight_tables import tensors_from_table

REST_FILE = "vlpjax_rest.safetensors"
NAME_MAP_FILE = "name_map.json"


def bert_config_to_hf(c, num_layers: int) -> dict:
    return dict(
        architectures=["BertModel"], model_type="bert", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act,
        pad_token_id=c.pad_token_id, position_embedding_type="absolute",
    )  # fmt: skip


def path_name(path: tuple) -> str:
    return "/".join(map(str, path))


def fusion_tensors(model) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(BertModel config.json, its tensors, the other tensors by vlpjax path, the name map)."""
    layers = model.txt.first_cross_layer
    table = [entry._replace(path=("txt",) + entry.path) for entry in bert_weight_map(layers)]
    bert = tensors_from_table(model, table)
    in_bert = {entry.path for entry in table}
    rest = {path_name(p): v for p, v in flat_params(model).items() if p not in in_bert}
    name_map = {
        "model.safetensors": {entry.hf_name: path_name(entry.path) for entry in table},
        "model.safetensors layouts": "Linear weights are [out, in], the transpose of the vlpjax kernel",
        REST_FILE: sorted(rest),
    }
    return bert_config_to_hf(model.txt.config, layers), bert, rest, name_map
