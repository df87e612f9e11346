# llm-appliance: one entry point for the controller's chores.
#   make demo   bring the appliance up on a local systemd container (inventory/demo)
#   make test   every test: lint, unit, molecule
#   make bench  figures: converge times, planner accuracy, report speed

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
MOLECULE_IMAGE = $(shell tools/build-test-image --name)

.PHONY: help venv lock deps docker image lint unit molecule test demo demo-destroy bench clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(BIN)/.installed: requirements/controller.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/controller.txt
	touch $@

venv: $(BIN)/.installed  ## controller toolchain, pinned with hashes

lock:  ## recompile requirements/*.txt from requirements/*.in (needs pip-tools)
	pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  -o requirements/controller.txt requirements/controller.in

deps:  ## distribution packages the tests need (Docker engine, debootstrap, PostgreSQL, Chromium)
	tools/install-host-deps

docker:
	tools/ensure-docker

image: docker
	tools/build-test-image

lint: venv
	yamllint --strict .
	ansible-lint --offline

unit: venv
	pytest

molecule: venv image
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) molecule test --scenario-name default

test: deps lint unit molecule

demo: venv image
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) molecule create --scenario-name default
	ansible-playbook site.yml -i inventory/demo

demo-destroy: venv
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) molecule destroy --scenario-name default

bench: venv image
	bench/converge-times

clean:
	rm -rf $(VENV) build .pytest_cache
