"""Worker-node side of the WMS: the pilot, the job wrapper and the watchdog (client side only)."""
