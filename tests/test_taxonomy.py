"""The names a recipe can use are listed once (vlpjax.taxonomy); every registry of
implementations covers exactly those names, and every recipe names only known ones."""

import glob
import os

import pytest

from vlpjax import taxonomy
from vlpjax.config import load_config
from vlpjax.objectives.registry import OBJECTIVES
from vlpjax.train.build import FAMILY_BUILDERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_family_has_a_builder_and_every_objective_a_term():
    assert set(FAMILY_BUILDERS) == set(taxonomy.FAMILIES)
    assert set(OBJECTIVES) == set(taxonomy.OBJECTIVE_NAMES)


def test_tables_refer_to_known_names():
    for family in taxonomy.FAMILIES.values():
        assert family.tasks is None or set(family.tasks) <= set(taxonomy.TASKS)
    for task in taxonomy.TASKS.values():
        assert set(task.objectives) <= set(taxonomy.OBJECTIVE_NAMES)


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_recipe_validates(recipe, hf_recipe_args):
    config = load_config(recipe + ":tiny", hf_recipe_args.get(os.path.basename(recipe)[:-3], []))
    assert config.model.family in taxonomy.FAMILIES
    assert set(config.objectives) <= set(taxonomy.FAMILIES[config.model.family].objectives)


def test_objective_problem_names_the_culprit():
    assert taxonomy.objective_problem("itc", "dual_encoder", "image_text") is None
    assert "needs a model family among ['fusion']" in taxonomy.objective_problem("itm", "dual_encoder", "image_text")
    assert "does not apply to data.task='vqa'" in taxonomy.objective_problem("itc", "fusion", "vqa")
