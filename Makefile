# repobuild — `make demo` and `make test` each set up their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_OUT ?= demo-out

.PHONY: venv demo test lint bench-smoke clean sysdeps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tool and its tests use (gpg, apt's tools, xz, rsync); installed when missing.
sysdeps:
	@bash .ci/sysdeps

demo: venv sysdeps
	@bash scripts/demo.sh $(PY) $(DEMO_OUT)

lint: venv
	$(VENV)/bin/ruff check repobuild tests bench
	$(VENV)/bin/mypy repobuild

test: venv sysdeps
	$(VENV)/bin/ruff check repobuild tests bench
	$(VENV)/bin/mypy repobuild
	$(VENV)/bin/pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
