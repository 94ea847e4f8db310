# archiso-hook: see README.md. `make demo` and `make test` each work alone on a
# fresh Debian 12 machine as root: both depend on `setup`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_HOST ?= /usr/bin/python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
BUILD       := build
FROZEN      := $(BUILD)/frozen/archiso-hook
STAGE       := $(BUILD)/stage

# What the lab and the frozen build need from Debian.
APT_PACKAGES := python3-venv python3-dev libpython3.11 binutils \
	qemu-system-x86 xorriso squashfs-tools busybox-static cpio zstd kmod \
	e2fsprogs dosfstools btrfs-progs udev util-linux shellcheck file fdisk mtools

PREFIX      ?= /usr
DESTDIR     ?=
PY_SOURCES  := $(shell find archiso_hook -name '*.py' | sort)
# The frozen tree is reproducible: same sources and venv, same bytes.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
export SOURCE_DATE_EPOCH

.PHONY: help setup frozen stage install uninstall lab demo test test-unit test-vm lint clean

help:
	@echo "make setup    install apt packages and .venv"
	@echo "make demo     build the sample live media and boot it in QEMU"
	@echo "make test     linters, unit tests and the QEMU boot tests"
	@echo "make frozen   build the frozen hook ($(FROZEN))"

setup: $(BUILD)/.apt-stamp $(VENV)/.stamp

$(BUILD)/.apt-stamp: Makefile
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.stamp: pyproject.toml $(BUILD)/.apt-stamp
	$(PYTHON_HOST) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

frozen: $(FROZEN)/archiso-hook

# PyInstaller --onedir: a directory tree, no unpacking at each start (see README).
# Modules the hook never imports at boot are excluded to keep the initramfs small.
$(FROZEN)/archiso-hook: $(VENV)/.stamp $(PY_SOURCES)
	rm -rf $(FROZEN) $(BUILD)/pyinstaller
	PYTHONHASHSEED=0 $(VENV)/bin/pyinstaller --noconfirm --log-level WARN --onedir \
		--name archiso-hook --distpath $(BUILD)/frozen --workpath $(BUILD)/pyinstaller \
		--specpath $(BUILD)/pyinstaller \
		--exclude-module tkinter --exclude-module unittest --exclude-module pydoc \
		--exclude-module sqlite3 --exclude-module lib2to3 --exclude-module pyroute2 \
		archiso_hook/__main__.py
	@touch $@

install: frozen
	install -d $(DESTDIR)$(PREFIX)/lib/archiso-hook $(DESTDIR)$(PREFIX)/bin
	cp -a $(FROZEN)/. $(DESTDIR)$(PREFIX)/lib/archiso-hook/
	install -Dm644 -t $(DESTDIR)$(PREFIX)/lib/initcpio/install initcpio/install/*
	install -Dm644 -t $(DESTDIR)$(PREFIX)/lib/initcpio/hooks initcpio/hooks/*
	ln -sfn ../lib/archiso-hook/archiso-hook $(DESTDIR)$(PREFIX)/bin/archiso-hook

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/lib/archiso-hook
	rm -f $(patsubst initcpio/%,$(DESTDIR)$(PREFIX)/lib/initcpio/%,$(wildcard initcpio/install/* initcpio/hooks/*)) \
		$(DESTDIR)$(PREFIX)/bin/archiso-hook

# The tree the lab builds its initramfs from: what `make install` puts on a system.
stage: frozen
	rm -rf $(STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(STAGE)) PREFIX=/usr

demo: setup stage
	$(PY) -m vm.demo

# Everything, the QEMU boots included. The frozen hook is staged first: the lab builds
# its initramfs from what `make install` would put on a system.
test: setup stage
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q tests

test-vm: setup stage
	$(PY) -m pytest -q -m vm tests

lint: setup
	$(VENV)/bin/ruff check archiso_hook tests vm
	$(VENV)/bin/ruff format --check archiso_hook tests vm
	$(VENV)/bin/mypy
	shellcheck -s sh initcpio/hooks/* vm/initcpio/init vm/initcpio/init_functions vm/initcpio/hooks/* vm/liveroot/init
	shellcheck -s bash initcpio/install/* vm/initcpio/functions vm/initcpio/install/* vm/mkinitramfs .ci/run

test-unit: setup
	$(PY) -m pytest -q -m 'not vm' tests

clean:
	rm -rf $(BUILD)
