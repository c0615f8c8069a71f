"""Transport implementations, imported lazily by whoever picks one."""
