"""What runs in the live system: the COW watchdog and its growth policy, `status`, and the
shutdown that takes the boot apart. Does not import `plan`."""
