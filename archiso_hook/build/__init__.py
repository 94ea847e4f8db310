"""What runs on the build host: the images, the ext4 geometry, the ISO and its boot loaders,
and the host tools the builder runs. Stays out of the boot path."""
