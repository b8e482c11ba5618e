"""`vlpjax export --format stablehlo` on clip_shapes:tiny and lm_shapes:tiny runs: the artefacts,
loaded in a fresh process that imports no model code, give the trained models' outputs at two
batch sizes."""

import numpy as np

from tests.test_recipes import _config
from tests.test_stablehlo import BATCHES, DECODE_STEPS, _serve_in_fresh_process, lm_reference
from vlpjax.models.decoding import left_pad
from vlpjax.train.export import export_run
from vlpjax.train.loop import train
from vlpjax.train.restore import trained_model


def _trained_export(recipe, data_dir, root):
    config = _config(recipe, data_dir, "--config.train.steps=2", "--config.train.checkpoint_every=2")
    workdir, out = str(root / recipe), str(root / f"{recipe}_stablehlo")
    train(config, workdir)
    export_run(config, workdir, out, "stablehlo")
    model, data = trained_model(config, workdir)
    return config, model, data, out


def _inputs(batch, seed, config, lm_config, data):
    rng = np.random.default_rng(seed)
    captions = ["a red circle at the top left.", "two blue squares", "a green triangle below a red square."]
    text_ids, text_mask = data.tokenizer(captions[:batch], config.data.text_len)
    prompts = [data.tokenizer.encode_plain(c)[: 2 + 3 * i] for i, c in enumerate(captions[:batch])]
    ids, mask = left_pad(prompts)
    pad = config.data.text_len - ids.shape[1]  # the exported prefill takes data.text_len tokens
    return {
        "image": rng.uniform(-1, 1, (batch, config.data.image_size, config.data.image_size, 3)).astype(np.float32),
        "text_ids": text_ids,
        "text_mask": text_mask,
        "ids": np.pad(ids, ((0, 0), (pad, 0))),
        "mask": np.pad(mask, ((0, 0), (pad, 0))),
        "tokens": rng.integers(5, lm_config.vocab_size, size=(batch, DECODE_STEPS)).astype(np.int32),
    }


def test_run_artefacts_reload_without_model_code_at_two_batch_sizes(tiny_shapes_dir, tmp_path):
    clip_config, dual, data, dual_dir = _trained_export("clip_shapes", tiny_shapes_dir, tmp_path)
    _, language_model, _, lm_dir = _trained_export("lm_shapes", tiny_shapes_dir, tmp_path)
    lm = language_model.lm
    inputs = {b: _inputs(b, b, clip_config, lm.config, data) for b in BATCHES}
    served = _serve_in_fresh_process({"dual_dir": dual_dir, "lm_dir": lm_dir}, inputs, tmp_path)
    for b, x in inputs.items():
        np.testing.assert_allclose(served[f"image_{b}"], dual.embed_image(x), atol=1e-5, rtol=0)
        np.testing.assert_allclose(served[f"text_{b}"], dual.embed_text(x), atol=1e-5, rtol=0)
        logits = lm_reference(lm, x["ids"], x["mask"], x["tokens"], max_len=lm.config.max_positions)
        assert served[f"lm_{b}"].shape == logits.shape == (b, 1 + DECODE_STEPS, lm.config.vocab_size)
        np.testing.assert_allclose(served[f"lm_{b}"], logits, atol=1e-5, rtol=0)
