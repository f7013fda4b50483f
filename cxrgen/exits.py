"""Exit codes of ``generate_cxr.py``, defined once (the README's list is this one)."""

EXIT_OK = 0  # every study of the shard (or run) has an ok row
EXIT_USAGE = 2  # bad configuration or input, or another process holds the lock: nothing was done
EXIT_ROW_ERRORS = 3  # finished, but some studies have status=error (1 is Python's own crash code)
EXIT_INCOMPLETE = 4  # the shard could not commit every row (e.g. rows that did not read back); the message says why
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGUSR1 after committing its work; run again to resume
EXIT_SIGINT = 130  # stopped by Ctrl-C after committing its work; run again to resume
