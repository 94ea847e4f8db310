"""The kernel's interfaces: ioctls and syscalls, loop, device-mapper, NBD, module loading
and the kernel log. Imports only the standard library and `archiso_hook.errors`."""
