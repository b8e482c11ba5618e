"""What every evaluator of a run reads: the model's current weights, the datasets its `data`
option names, and the image embeddings of a split, computed once per evaluation round and
shared (retrieval and zero-shot on the same split embed its images once)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from vlpjax.data import builders
from vlpjax.data.pipeline import PipelineConfig, image_arrays
from vlpjax.data.tokenizer import TextTokenizer, as_text
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.generation import Generator
from vlpjax.evaluate.inference import Inference


@dataclasses.dataclass
class SplitImages:
    """A split's image embeddings [N, E], each image's captions, and its class `labels` [N]
    (with `object_counts` [N] where rows list all their objects) where the rows have them.
    `tokens`: the image tower's tokens and mask, for ITM re-ranking."""

    embeddings: np.ndarray
    captions: list[list[str]]
    labels: np.ndarray | None
    object_counts: np.ndarray | None
    tokens: dict[str, np.ndarray] | None


class EvalContext:
    """One run's evaluation state; `set_weights` before each round."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        graphdef,
        mesh: Mesh,
        data,
        pipeline: PipelineConfig,
        workdir: str,
        write_pngs: bool,
    ):
        self.config, self.graphdef, self.mesh, self.data = config, graphdef, mesh, data
        self.pipeline, self.workdir, self.write_pngs = pipeline, workdir, write_pngs
        self.tokenizer: TextTokenizer = data.tokenizer
        self.params = self.frozen = None
        self._builders: dict[str, Any] = {}
        self._inference: dict[int, Inference] = {}
        self._split_images: dict[tuple, SplitImages] = {}
        self._generators: dict[int, Generator] = {}

    def set_weights(self, params, frozen) -> None:
        """A new round: these weights, and no embeddings cached from the last one."""
        self.release()
        self.params, self.frozen = params, frozen
        for inference in self._inference.values():
            inference.params, inference.frozen = params, frozen

    def release(self) -> None:
        """Drop the round's weights, embeddings and tower tokens: training goes on without them."""
        self.params = self.frozen = None
        self._split_images.clear()
        self._generators.clear()
        for inference in self._inference.values():
            inference.params = inference.frozen = None

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def generator(self, beams: int) -> Generator:
        """Flamingo generation with this round's weights (media encoding compiled once a round)."""
        if beams not in self._generators:
            self._generators[beams] = Generator(self.model(), self.tokenizer, beams=beams)
        return self._generators[beams]

    def inference(self, batch_size: int) -> Inference:
        """Jitted embedding calls at this batch size, compiled once per run."""
        if batch_size not in self._inference:
            self._inference[batch_size] = Inference(self.graphdef, self.params, self.frozen, self.mesh, batch_size)
        return self._inference[batch_size]

    def data_config(self, spec) -> ml_collections.ConfigDict:
        """The run's `data` section with the evaluator's `data` fields in place. Another
        dataset does not inherit the run's folder, shards or hold-out seed."""
        data = ml_collections.ConfigDict(self.config.data.to_dict())
        fields = dict(spec.data or {})
        if fields.get("name", data.name) != data.name:
            data.update(folder="", shards="", split_seed=0)
        data.update(fields)
        return data

    def dataset_kind(self, spec) -> builders.DatasetKind:
        return builders.dataset_kind(self.data_config(spec).name)

    def builder(self, spec):
        data = self.data_config(spec)
        key = json.dumps(data.to_dict(), sort_keys=True, default=str)
        if key not in self._builders:
            self._builders[key] = builders.load_dataset(data)
        return self._builders[key]

    def source(self, spec, split: str | None = None):
        """The split (default: the evaluator's `split`) of the evaluator's dataset."""
        split = split or spec.split
        if spec.data is None and split in ("train", "test"):
            return self.data.train_source if split == "train" else self.data.test_source
        sources = self.builder(spec).as_data_source()
        if split not in sources:
            raise InvalidInput(
                f"dataset {self.data_config(spec).name} has the splits {sorted(sources)}, not {split!r} "
                "(an evaluator's `split` option)"
            )
        return sources[split]

    def class_names(self, spec) -> list[str]:
        if spec.classes:
            return [str(c) for c in spec.classes]
        return self.dataset_kind(spec).class_names(self.builder(spec))

    def split_images(self, spec, with_tokens: bool = False) -> SplitImages:
        """Every image of the evaluator's split embedded, a batch decoded at a time: only the
        embeddings (and, for ITM, the tower's tokens) stay in memory."""
        key = (json.dumps(self.data_config(spec).to_dict(), sort_keys=True, default=str), spec.split)
        cached = self._split_images.get(key)
        if cached is not None and (cached.tokens is not None or not with_tokens):
            return cached
        source, inference = self.source(spec), self.inference(spec.batch_size)
        embeddings, tokens, captions, labels, counts = [], [], [], [], []
        for start in tqdm(range(0, len(source), spec.batch_size), desc=f"images ({spec.split})", leave=False):
            examples = [source[i] for i in range(start, min(start + spec.batch_size, len(source)))]
            arrays = image_arrays(examples, self.pipeline)
            embeddings.append(inference.images(arrays))
            if with_tokens:
                tokens.append(inference.image_tokens(arrays))
            for e in examples:
                captions.append([as_text(c) for c in e["captions"]] if "captions" in e else [])
                if "label" in e:
                    labels.append(int(e["label"]))
                if "labels" in e:
                    counts.append(len(e["labels"]))
        if not embeddings:
            raise InvalidInput(f"the {spec.split} split of {self.data_config(spec).name} is empty")
        self._split_images[key] = SplitImages(
            np.concatenate(embeddings),
            captions,
            np.asarray(labels, np.int64) if len(labels) == len(captions) else None,
            np.asarray(counts, np.int64) if len(counts) == len(captions) else None,
            jax.tree.map(lambda *parts: np.concatenate(parts), *tokens) if tokens else None,
        )
        return self._split_images[key]
