"""What runs on the build host: the images, the ext4 geometry, the ISO and its boot loaders,
and the host tools the builder runs. Stays out of the boot path, and out of the initramfs:
the frozen tree carries it as sources beside its frozen modules (Makefile: BUILDER_DIR)."""
