# `make test`: create .venv if missing, install vlpjax with its test extra, run the tests.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

DATA_DIR ?= data
WORKDIR ?= workdirs/clip_shapes

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# `make demo`: build the embedded dataset, pretrain the default recipe on CPU, evaluate.
demo: $(STAMP)
	$(VENV)/bin/vlpjax data build synthetic_shapes --data_dir $(DATA_DIR)
	$(VENV)/bin/vlpjax train --config configs/clip_shapes.py --workdir $(WORKDIR) --config.data.data_dir=$(DATA_DIR)

# `make lint`: ruff (pyflakes, import order, bugbear, line length 120; ruff.toml) and format check.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers, a test file each at a time (module fixtures run once): the suite is compile-bound
# and single-threaded per test, so the 2 cores of CI take 15 min instead of 20.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) *.egg-info
