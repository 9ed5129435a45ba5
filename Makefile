# Two entry points: `make demo` (Suzanne textured in Blender-as-a-module on the built-in tiny model)
# and `make test` (the whole suite). Both build the virtual environment when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[blender,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zs demo --out $(OUT)

test: $(STAMP)
	BLENDER_USER_RESOURCES=$$(mktemp -d) $(PY) -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache
