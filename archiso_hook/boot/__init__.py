"""What runs in the initramfs: the executor of the boot plan, the medium, the images,
the network boot, the state file, the report and the handoff. Imports neither `build` nor
`live`."""
