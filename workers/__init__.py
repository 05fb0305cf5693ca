"""Background work: publishing decisions to Redis, and (next) the stream consumer and RQ jobs."""
