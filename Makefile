# nexvk: `make` sets everything up and runs the default model; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
NEXVK := $(VENV)/bin/nexvk
PROMPT ?= The three most useful things to know about the sun are

.PHONY: demo setup test bench validate shaders
demo: setup
	$(NEXVK) devices || true
	$(NEXVK) run -p "$(PROMPT)" -n 64 -ctk turbo3 -ctv turbo3

setup:
	bash tools/setup.sh

test:
	$(PY) -m pytest
	$(NEXVK) validate --quick

validate:
	$(NEXVK) validate

bench:
	$(NEXVK) bench

shaders:
	$(PY) tools/build_shaders.py
