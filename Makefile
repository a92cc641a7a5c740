# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build .venv on first use from pyproject.toml + requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install bench clean image

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgpipe run configs/fonts.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/transform.py
	$(BIN)/python bench/e2e.py

# The step image every KFP task runs in, as imgpipe:local (deploy/README.md). Where the
# official base images cannot be pulled, deploy/base_images.sh builds stand-ins first.
IMAGE ?= imgpipe:local
image:
	bash deploy/base_images.sh
	docker build --network host -f deploy/Dockerfile -t $(IMAGE) .

clean:
	rm -rf runs serving .pytest_cache
