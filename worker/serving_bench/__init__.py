"""The serving benchmark (`adapterd bench serving`): engine, HTTP, hot swap, memory."""
