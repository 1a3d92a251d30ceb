# nexvk: `make` sets everything up and asks the default (instruct) model a question as a chat;
# `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
NEXVK := $(VENV)/bin/nexvk
PROMPT ?= Give me three tips for a good night's sleep.

.PHONY: demo setup test bench validate shaders
demo: setup
	$(NEXVK) devices || true
	$(NEXVK) run --chat -p "$(PROMPT)" -n 160 -ctk turbo4 -ctv turbo3

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
