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
# The i686 hook is built in an i386 Debian root (tools/i386-root), cached here.
I386_ROOT   := $(BUILD)/i386-root
FROZEN_I686 := $(BUILD)/frozen-i686/archiso-hook

# What the lab and the frozen build need from Debian.
APT_PACKAGES := python3-venv python3-dev libpython3.11 binutils \
	qemu-system-x86 xorriso squashfs-tools busybox-static cpio zstd lz4 bzip2 kmod \
	e2fsprogs dosfstools btrfs-progs udev util-linux shellcheck file fdisk mtools strace \
	isolinux syslinux-common grub-common grub-efi-amd64-bin grub-efi-ia32-bin ovmf ovmf-ia32 \
	openssl \
	debootstrap gcc-multilib dmsetup \
	nginx nbd-server nfs-ganesha nfs-ganesha-vfs libnfs-utils curl \
	makepkg pacman-package-manager libarchive-tools fakeroot
# (isolinux to ovmf-ia32: the boot loaders of a bootable ISO, and the UEFI firmware that
# boots it in QEMU; openssl: the lab's own CA for https servers; the last line: tests/pkg builds the Arch package with makepkg; bsdtar
# lists it)

PREFIX      ?= /usr
DESTDIR     ?=
VERSION     := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' archiso_hook/__init__.py)
# Where the system packages come from: apt on Debian. A PKGBUILD has them from its
# makedepends and says APT_STAMP= (packaging/PKGBUILD).
APT_STAMP   ?= $(BUILD)/.apt-stamp
PY_SOURCES  := $(shell find archiso_hook -name '*.py' | sort)
# The frozen tree is reproducible: same sources and venv, same bytes.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1700000000)
export SOURCE_DATE_EPOCH

.PHONY: help setup frozen frozen-i686 stage iso install install-i686 uninstall lab demo test \
	test-unit test-vm lint bench bench-boot bench-transfer bench-net bench-loaders clean

help:
	@echo "make setup    install apt packages and .venv"
	@echo "make demo     build the sample ISO and boot it in QEMU, as a PC does"
	@echo "make iso      the sample ISO that boots by itself: $(SAMPLE_ISO)"
	@echo "make test     linters, unit tests and the QEMU boot tests"
	@echo "make frozen   build the frozen hook ($(FROZEN))"
	@echo "make frozen-i686  the same for i686 ($(FROZEN_I686)), in an i386 root"
	@echo "make stage    make install (both architectures) into $(STAGE), for the lab"
	@echo "make lint     ruff, mypy, shellcheck (make test-unit, test-vm: parts of make test)"
	@echo "make fuzz     the parsers and the plan fuzzed, over 100,000 examples (~11 min)"
	@echo "make bench    the benchmarks against a baseline (~30 min; docs/performance.md)"
	@echo "make install  DESTDIR=... PREFIX=/usr: hooks, frozen tree, launcher, docs, license"
	@echo "make dist     the source tarball for packaging/PKGBUILD (then makepkg there)"

setup: $(BUILD)/.apt-stamp $(VENV)/.stamp

# A mirror caught mid-sync fails a list (seen: bookworm-security's i386 one): go on with
# the lists there are; a package that is really missing still fails the install.
APT_UPDATE = { apt-get update -q || echo "apt: some lists failed to update; using the rest"; }

$(BUILD)/.apt-stamp: Makefile
	@mkdir -p $(BUILD)
	@# i386 packages: the lab's i686 kernel (apt-get download linux-image-686:i386).
	@if ! dpkg --print-foreign-architectures | grep -qx i386; then \
		echo "apt: adding the i386 architecture"; dpkg --add-architecture i386; fi
	@apt-cache show linux-image-686:i386 >/dev/null 2>&1 || $(APT_UPDATE)
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		$(APT_UPDATE); DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

# Order-only on the apt stamp: an edit of this Makefile need not rebuild the venv.
$(VENV)/.stamp: pyproject.toml | $(APT_STAMP)
	$(PYTHON_HOST) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

frozen: $(FROZEN)/archiso-hook

# The codecs of East Asian encodings, which need the _codecs_* modules left out below.
CJK_CODECS := big5 big5hkscs cp932 cp949 cp950 euc_jis_2004 euc_jisx0213 euc_jp euc_kr \
	gb18030 gb2312 gbk hz iso2022_jp iso2022_jp_1 iso2022_jp_2 iso2022_jp_2004 iso2022_jp_3 \
	iso2022_jp_ext iso2022_kr johab shift_jis shift_jis_2004 shift_jisx0213

# PyInstaller --onedir: a directory tree, no unpacking at each start (docs/architecture.md).
# Modules the hook never imports at boot are excluded to keep the initramfs small (curses,
# with libncursesw and libtinfo, 0.5 MiB: only psutil's terminal colours, tried and
# optional; not unittest: pyroute2's rtnetlink socket imports unittest.mock at its top).
# pyroute2's package __init__ is never run (archiso_hook/boot/net.py), so the parts only
# it imports (NDB, nftables, wireless, socket diagnostics with psutil, ...) are left out.
# The same options for every architecture. PYTHONPATH: this tree's archiso_hook, also when
# the venv's editable install points to another copy (makepkg builds in its srcdir).
# hash_seed=0: Python seeds its string hashes from the kernel's random pool at each start;
# early in a boot, before the pool is ready (no RDRAND, no virtio-rng: older machines and
# most VMs), that read makes the kernel gather jitter entropy first: 1.0 of the 1.35
# billion instructions from exec to the first line in the lab's guest (docs/performance.md).
# The hook hashes nothing an attacker could choose in bulk, which randomisation is for.
PYINSTALLER_OPTS := --noconfirm --log-level WARN --onedir --name archiso-hook \
	--python-option hash_seed=0 \
	--exclude-module tkinter --exclude-module pydoc --exclude-module curses \
	--exclude-module sqlite3 --exclude-module lib2to3 \
	--optimize 2 --additional-hooks-dir tools/pyinstaller \
	--exclude-module _codecs_cn --exclude-module _codecs_hk --exclude-module _codecs_iso2022 \
	--exclude-module _codecs_jp --exclude-module _codecs_kr --exclude-module _codecs_tw \
	--exclude-module _multibytecodec $(foreach c,$(CJK_CODECS),--exclude-module encodings.$(c)) \
	--exclude-module bz2 --exclude-module _bz2 \
	--exclude-module decimal --exclude-module _decimal --exclude-module _pydecimal \
	--exclude-module fractions --exclude-module statistics --exclude-module tarfile \
	--exclude-module xml --exclude-module xmlrpc --exclude-module pyexpat \
	--exclude-module logging.handlers --exclude-module smtplib \
	$(foreach m,ndb ipdb conntrack nftables ipset ipvs iwutil plan9 wiset devlink \
		netlink.nl80211 netlink.diag,--exclude-module pyroute2.$(m)) \
	--exclude-module archiso_hook.build --hidden-import uuid --exclude-module _uuid
# The builder (archiso_hook/build/, `archiso-hook build`) runs on the build host, never at
# boot: it is left out of the modules frozen into the executable, and its sources go beside
# them, in BUILDER_DIR, where the frozen hook imports them from the file system (Python's
# own finder, after PyInstaller's). The install hook leaves that directory out of the
# initramfs (initcpio/install/archiso). What the builder imports is frozen as usual: of
# the standard library only uuid is the builder's alone (uuid5 for the images' UUIDs);
# its C part (_uuid, libuuid) makes time-based UUIDs, which the builder does not.
BUILDER_DIR := _internal/archiso_hook/build
# Run-time hooks that replace PyInstaller's own (tools/pyinstaller/rthooks.dat says why).
# PYI_OPTIONS: a file rewritten when the options change, so that both trees are rebuilt.
PYI_OPTIONS := $(BUILD)/.pyinstaller-options
PYI_HOOKS   := tools/pyinstaller/rthooks.dat $(wildcard tools/pyinstaller/rthooks/*.py) \
	$(wildcard tools/pyinstaller/hook-*.py) \
	$(PYI_OPTIONS)
$(shell mkdir -p $(BUILD) && { echo '$(PYINSTALLER_OPTS)' | cmp -s - $(PYI_OPTIONS) || \
	echo '$(PYINSTALLER_OPTS)' > $(PYI_OPTIONS); })

# PYINSTALLER_ZLIB_COMPRESSION_LEVEL=9: the archive of modules inside the binary is
# deflated, module by module. Stored, the initramfs's zstd did a little better over the
# whole (about 0.1 MiB: the bench's image is 14.29 MiB stored, 14.20 deflated and without
# curses), but the binary is also copied to /run/initramfs for the shutdown, where it
# stays in RAM until the power-off: 6.8 MiB stored, 2.8 deflated; and the kernel
# unpacks 4 MB less at boot. Each module is inflated as it is imported.
# attrs-methods.marshal: the methods attrs generates, compiled by the interpreter that is
# frozen (archiso_hook/boot/precompiled.py), with -OO as the frozen hook runs.
$(FROZEN)/archiso-hook: $(VENV)/.stamp $(PY_SOURCES) $(PYI_HOOKS)
	rm -rf $(FROZEN) $(BUILD)/pyinstaller
	mkdir -p $(BUILD)/pyinstaller
	PYTHONHASHSEED=0 PYTHONPATH=$(CURDIR) PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python -OO \
		-m archiso_hook.boot.precompiled $(BUILD)/pyinstaller/attrs-methods.marshal
	PYTHONHASHSEED=0 PYINSTALLER_ZLIB_COMPRESSION_LEVEL=9 PYTHONPATH=$(CURDIR) \
		$(VENV)/bin/pyinstaller $(PYINSTALLER_OPTS) \
		--add-data $(CURDIR)/$(BUILD)/pyinstaller/attrs-methods.marshal:archiso_hook/boot \
		--distpath $(BUILD)/frozen --workpath $(BUILD)/pyinstaller \
		--specpath $(BUILD)/pyinstaller archiso_hook/__main__.py
	install -d $(FROZEN)/$(BUILDER_DIR)
	install -m644 -t $(FROZEN)/$(BUILDER_DIR) archiso_hook/build/*.py
	@touch $@

frozen-i686: $(FROZEN_I686)/archiso-hook

# debootstrap and pip once, about two minutes; redone only
# when the root's package list or the pins in pyproject.toml change.
$(I386_ROOT)/.complete: tools/i386-root pyproject.toml $(BUILD)/.apt-stamp
	tools/i386-root create $(I386_ROOT)

# Built inside the i386 root, so the tree links that root's i386 glibc. The repository
# is bound at its own path there: the same relative paths as the native rule.
$(FROZEN_I686)/archiso-hook: $(I386_ROOT)/.complete $(PY_SOURCES) $(PYI_HOOKS)
	rm -rf $(FROZEN_I686) $(BUILD)/pyinstaller-i686
	mkdir -p $(BUILD)/pyinstaller-i686
	tools/i386-root run $(I386_ROOT) -b $(CURDIR) -C $(CURDIR) -e PYTHONHASHSEED=0 \
		-e PYTHONPATH=$(CURDIR) -e PYTHONDONTWRITEBYTECODE=1 -- \
		/opt/archiso-hook-venv/bin/python -OO \
		-m archiso_hook.boot.precompiled $(BUILD)/pyinstaller-i686/attrs-methods.marshal
	tools/i386-root run $(I386_ROOT) -b $(CURDIR) -C $(CURDIR) -e PYTHONHASHSEED=0 \
		-e SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) -e PYTHONPATH=$(CURDIR) \
		-e PYINSTALLER_ZLIB_COMPRESSION_LEVEL=9 -- \
		/opt/archiso-hook-venv/bin/pyinstaller $(PYINSTALLER_OPTS) \
		--add-data $(CURDIR)/$(BUILD)/pyinstaller-i686/attrs-methods.marshal:archiso_hook/boot \
		--distpath $(BUILD)/frozen-i686 --workpath $(BUILD)/pyinstaller-i686 \
		--specpath $(BUILD)/pyinstaller-i686 archiso_hook/__main__.py
	install -d $(FROZEN_I686)/$(BUILDER_DIR)
	install -m644 -t $(FROZEN_I686)/$(BUILDER_DIR) archiso_hook/build/*.py
	@touch $@

# What a user reads, in /usr/share/doc/archiso-hook as in the tree (README.md, docs/*.md),
# so that their links to each other work; the license goes to /usr/share/licenses.
DOCS := README.md $(sort $(wildcard docs/*.md))

install: frozen
	install -d $(DESTDIR)$(PREFIX)/lib/archiso-hook $(DESTDIR)$(PREFIX)/bin
	cp -a $(FROZEN)/. $(DESTDIR)$(PREFIX)/lib/archiso-hook/
	install -Dm644 -t $(DESTDIR)$(PREFIX)/lib/initcpio/install initcpio/install/*
	install -Dm644 -t $(DESTDIR)$(PREFIX)/lib/initcpio/hooks initcpio/hooks/*
	ln -sfn ../lib/archiso-hook/archiso-hook $(DESTDIR)$(PREFIX)/bin/archiso-hook
	for f in $(DOCS); do install -Dm644 "$$f" "$(DESTDIR)$(PREFIX)/share/doc/archiso-hook/$$f" || exit; done
	install -Dm644 LICENSE $(DESTDIR)$(PREFIX)/share/licenses/archiso-hook/LICENSE

# A second architecture's tree beside the native one: the install hook puts the one
# matching the kernel's into the image (docs/development.md: "Building for i686 and x86_64").
install-i686: frozen-i686
	install -d $(DESTDIR)$(PREFIX)/lib/archiso-hook-i686
	cp -a $(FROZEN_I686)/. $(DESTDIR)$(PREFIX)/lib/archiso-hook-i686/

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/lib/archiso-hook $(DESTDIR)$(PREFIX)/lib/archiso-hook-i686
	rm -f $(patsubst initcpio/%,$(DESTDIR)$(PREFIX)/lib/initcpio/%,$(wildcard initcpio/install/* initcpio/hooks/*)) \
		$(DESTDIR)$(PREFIX)/bin/archiso-hook \
		$(addprefix $(DESTDIR)$(PREFIX)/share/doc/archiso-hook/,$(DOCS)) \
		$(DESTDIR)$(PREFIX)/share/licenses/archiso-hook/LICENSE
	rmdir --ignore-fail-on-non-empty $(DESTDIR)$(PREFIX)/share/doc/archiso-hook/docs \
		$(DESTDIR)$(PREFIX)/share/doc/archiso-hook \
		$(DESTDIR)$(PREFIX)/share/licenses/archiso-hook 2>/dev/null || true

# The source tarball packaging/PKGBUILD builds from: the files of this tree that git tracks
# or would track (not build/ nor .venv/), as they are now, uncommitted edits included.
DISTDIR ?= packaging
DIST    := $(DISTDIR)/archiso-hook-$(VERSION).tar.gz

.PHONY: dist
dist:
	@git rev-parse --is-inside-work-tree >/dev/null || { echo "make dist needs a git checkout"; exit 1; }
	@mkdir -p $(DISTDIR)
	git ls-files -z --cached --others --exclude-standard \
		| while IFS= read -r -d '' f; do [ ! -e "$$f" ] || printf '%s\0' "$$f"; done \
		| tar --null -T - --transform 's,^,archiso-hook-$(VERSION)/,' --owner=0 --group=0 \
			--numeric-owner -czf $(DIST).tmp
	mv $(DIST).tmp $(DIST)
	@echo "$(DIST): now run makepkg in $(DISTDIR)/"

# The tree the lab builds its initramfs from: what `make install` puts on a system,
# with the i686 tree beside the native one.
stage: frozen frozen-i686
	rm -rf $(STAGE)
	$(MAKE) --no-print-directory install install-i686 DESTDIR=$(abspath $(STAGE)) PREFIX=/usr

# The sample medium for x86_64 and i686, made by the staged `archiso-hook build` around
# Debian's kernels: it boots by itself (BIOS and UEFI, CD and USB stick); its default entry
# runs the lab's checks and powers off (vm/sample_iso.py).
SAMPLE_ISO := $(BUILD)/iso/archiso-sample.iso
iso: setup stage
	$(PY) -m vm.sample_iso $(SAMPLE_ISO)

demo: setup stage iso
	$(PY) -m vm.demo $(SAMPLE_ISO)

# Everything, the QEMU boots included. The frozen hook is staged first: the lab builds
# its initramfs from what `make install` would put on a system; the sample ISO is made by
# it, and booted through firmware by tests/vm/test_9*_iso_*.py.
# Two workers (pytest-xdist), each test file on one: two guests boot at a time, one per
# core (a TCG guest keeps one core busy); each worker has its own lab directory.
test: setup stage iso
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Figures as ratios to a baseline: see bench/. The four benches, about 30 minutes.
bench: bench-boot bench-transfer bench-net bench-loaders

# archiso-hook against two busybox shell hooks (bench/baseline: under udev, and the floor
# without udev) on the same media, kernel and QEMU: medians and ratios to each in
# bench/results/boot.txt (bench/boot.py says how it times).
bench-boot: setup stage
	$(PY) -m bench.boot

# copytoram and checksum rates against dd, in one boot: bench/results/transfer.txt.
bench-transfer: setup stage
	$(PY) -m bench.transfer

# Network boot: the hook's HTTP download rate against curl on the host and busybox wget
# in the same guest: bench/results/net.txt.
bench-net: setup stage
	$(PY) -m bench.net

# Power-on to the live root through SeaBIOS and OVMF and the ISO's loaders, against QEMU's
# direct kernel boot, on the sample ISO: bench/results/loaders.txt.
bench-loaders: setup stage
	$(PY) -m bench.loaders

test-vm: setup stage iso
	$(PY) -m pytest -q -m vm tests

lint: setup
	$(VENV)/bin/ruff check archiso_hook tests vm bench
	$(VENV)/bin/ruff format --check archiso_hook tests vm bench
	$(VENV)/bin/mypy
	shellcheck -s sh initcpio/hooks/* bench/baseline/hooks/* vm/initcpio/init vm/initcpio/init_functions vm/initcpio/hooks/* vm/liveroot/init \
		vm/initcpio/udhcpc.script
	shellcheck -s bash initcpio/install/* bench/baseline/install/* vm/initcpio/functions vm/initcpio/install/* vm/mkinitramfs .ci/run \
		tools/i386-root packaging/PKGBUILD

test-unit: setup
	$(PY) -m pytest -q -m 'not vm' tests

# Property-based fuzzing of the parsers and the boot plan: tests/unit/test_fuzz_*.py, which
# draw from tests/unit/strategies.py, with the `fuzz` profile of tests/conftest.py, 7,000
# examples a property (over 100,000 in all, about 11 minutes on 2 cores); prints the
# examples run, by property. Failures are kept in .hypothesis/ and replayed first next
# time. `make test` runs the same files with the `ci` profile: reproducible, in seconds.
.PHONY: fuzz
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/unit/test_fuzz_*.py

clean:
	rm -rf $(BUILD)
