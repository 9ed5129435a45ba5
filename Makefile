# Two entry points: `make demo` (Suzanne textured in Blender-as-a-module on the built-in tiny model)
# and `make test` (the whole suite). Both build the virtual environment when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
# The LTS releases the extension also supports: the add-on tests run in one environment
# each, holding that release's bpy and reading everything else from .venv (a .pth file).
LTS_BLENDERS := 4.2.23 4.5.15
LTS_STAMPS := $(foreach version,$(LTS_BLENDERS),.venv-bpy$(version)/.installed)

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[blender,test,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zs demo --out $(OUT)

.venv-bpy%/.installed: $(STAMP)
	test -x .venv-bpy$*/bin/python || $(PYTHON) -m venv .venv-bpy$*
	.venv-bpy$*/bin/python -m pip install --quiet --no-deps "bpy==$*"
	.venv-bpy$*/bin/python -m pip uninstall --quiet --yes setuptools  # .venv's newer one builds the package
	$(abspath $(PY)) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$(.venv-bpy$*/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zs_dev_venv.pth"
	touch $@

test: $(STAMP) $(LTS_STAMPS)
	BLENDER_USER_RESOURCES=$$(mktemp -d) $(PY) -m pytest -q
	for version in $(LTS_BLENDERS); do \
		BLENDER_USER_RESOURCES=$$(mktemp -d) .venv-bpy$$version/bin/python -m pytest -q -p no:cacheprovider tests/addon \
			|| exit 1; \
	done

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-bpy* out .pytest_cache
