"""BLEU-4 and CIDEr-D equal the COCO caption evaluation's numbers (pycocoevalcap, a test-only
dependency) on fixed random candidate/reference sets."""

import numpy as np
import pytest

from vlpjax.evaluate.caption_metrics import bleu, cider_d, simple_tokens

WORDS = "a an the red blue green circle square triangle left right of above below two three is".split()


def _caption(rng, low, high):
    return " ".join(rng.choice(WORDS, size=rng.integers(low, high)))


def _sets(count=25, seed=0):
    rng = np.random.default_rng(seed)
    references = [[_caption(rng, 4, 13) for _ in range(rng.integers(1, 6))] for _ in range(count)]
    candidates = [_caption(rng, 2, 13) for _ in range(count)]
    candidates[0] = references[0][0]  # a perfect match
    candidates[1] = "circle"  # far shorter than its references
    candidates[2] = ""  # nothing generated: scores 0
    return candidates, references


def _reference_scores(candidates, references):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    return bleus, cider, per_image


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_and_cider_d_equal_pycocoevalcap(seed):
    candidates, references = _sets(seed=seed)
    want_bleu, want_cider, want_per_image = _reference_scores(candidates, references)
    np.testing.assert_allclose(bleu(candidates, references), want_bleu, atol=1e-6, rtol=0)
    cider, per_image = cider_d(candidates, references)
    assert abs(cider - want_cider) <= 1e-6
    np.testing.assert_allclose(per_image, want_per_image, atol=1e-6, rtol=0)
    assert 0 < want_bleu[3] < 1 and want_cider > 0  # neither figure is trivially 0 or perfect


def test_better_captions_score_higher():
    _, references = _sets()
    exact = [refs[0] for refs in references]
    shuffled = [" ".join(reversed(refs[0].split())) for refs in references]
    assert bleu(exact, references)[3] > bleu(shuffled, references)[3]
    assert cider_d(exact, references)[0] > cider_d(shuffled, references)[0]


def test_tokens_are_lower_case_words():
    assert simple_tokens("A red Circle, above the square.") == "a red circle above the square"
    with pytest.raises(ValueError, match="no reference caption"):
        bleu(["a circle"], [[]])
